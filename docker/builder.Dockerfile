# The plan builder for `make engines`: NVIDIA's TensorRT 24.10 image has TensorRT 10.5, its Python
# API and trtexec, the same TensorRT as the Triton 24.10 server image (a plan only loads in the
# TensorRT version that built it). Added: only what the plan step imports beyond the image and the
# standard library (build/tensorrt.py, build/verify_plans.py, build/plan_runner.py): numpy, and
# tokenizers to tokenize the held-out texts as the ONNX check did. --no-deps: tokenizers needs no
# other package to read a tokenizer.json. Versions match requirements.lock.
FROM nvcr.io/nvidia/tensorrt:24.10-py3

RUN python3 -m pip install --no-cache-dir --no-deps "numpy==1.26.4" "tokenizers==0.23.3" \
 && (command -v make >/dev/null || (apt-get update \
     && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*))
ENV PATH=/usr/src/tensorrt/bin:${PATH}
WORKDIR /workspace
# NGC's entrypoint first (CUDA forward compatibility), then the make target given as the command,
# run with the image's python3 (a host .venv is not usable inside)
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "make", "PY=python3"]
CMD ["engines"]
