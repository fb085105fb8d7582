# The GPU build machine for `make engines`: NVIDIA's TensorRT 24.10 image has TensorRT 10.5 and
# trtexec, the same TensorRT as the Triton 24.10 server image (a plan only loads in the TensorRT
# version that built it). Added: what `python -m build engines` reads ONNX models with, numpy < 2
# like the rest of the project. Versions match requirements.lock.
FROM nvcr.io/nvidia/tensorrt:24.10-py3

RUN python3 -m pip install --no-cache-dir "numpy==1.26.4" "onnx==1.23.2" \
 && (command -v make >/dev/null || (apt-get update \
     && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*))
ENV PATH=/usr/src/tensorrt/bin:${PATH}
WORKDIR /workspace
