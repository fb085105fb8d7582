# The GPU server: NVIDIA's Triton 24.10 image, i.e. Triton 2.51.0, the same server release as the
# embedded CPU server (nvidia-pytriton 0.7.0), so one model repository layout serves both.
# The image has the TensorRT, ONNX Runtime, libtorch and Python backends but no `tokenizers`:
# our shared `tokenizer` model (Python backend) needs it, and the Python-backend stub needs
# numpy < 2 (numpy 2 crashes it on string tensors). Versions match requirements.lock.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

RUN python3 -m pip install --no-cache-dir --no-deps "numpy==1.26.4" "tokenizers==0.23.3" \
 && (command -v curl >/dev/null || (apt-get update \
     && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*))

COPY docker/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh
# the health probe (compose healthcheck, Kubernetes liveness): one real text through every ensemble,
# since Triton keeps a model READY after its Python stub died; standard library only
COPY server/probe.py /usr/local/bin/triton-probe
RUN chmod 0755 /usr/local/bin/triton-entrypoint.sh /usr/local/bin/triton-probe
# NGC's entrypoint runs first: it sets up CUDA forward compatibility on data-center drivers older
# than the image's CUDA 12.6, then execs its arguments: ours, which execs tritonserver.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/local/bin/triton-entrypoint.sh"]
