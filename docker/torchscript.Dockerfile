# The TorchScript tracer for `make torchscript`: NVIDIA's PyTorch 24.10 image, whose torch
# (2.5.0a0+e000cf0ad9.nv24.10) is the libtorch the Triton 24.10 server loads TorchScript with; the
# host's torch 2.13 writes files an older libtorch is not promised to read. Added: only what the
# trace step imports beyond the image's torch and the standard library (build/export_torchscript.py,
# training/model.py): safetensors, to read the checkpoint's weights. Version matches requirements.lock.
FROM nvcr.io/nvidia/pytorch:24.10-py3

RUN python3 -m pip install --no-cache-dir --no-deps "safetensors==0.8.0"
WORKDIR /workspace
# NGC's entrypoint first (CUDA forward compatibility), then the make target given as the command
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "make", "PY=python3"]
CMD ["torchscript"]
