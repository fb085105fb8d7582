# The cpu overlay's server image:
#   docker build -f deploy/k8s/overlays/cpu/triton-cpu.Dockerfile -t bert-triton/tritonserver-cpu:2.51.0 .
# Triton 2.51.0 from the nvidia-pytriton wheel: the release inside nvcr.io/nvidia/tritonserver:24.10-py3
# (the compose image) and the server this project's CPU tests run. The cpu target's Python models
# import onnxruntime, torch and tokenizers; NVIDIA's image has Python 3.10, for which the pinned
# onnxruntime has no wheel, so this image runs Python 3.11 with exactly requirements.lock's pins,
# installs Triton with the project's own installer (server/install.py), and starts it through the
# same entrypoint as compose (docker/triton-entrypoint.sh: the admin key from
# /run/secrets/triton_admin_key), with the same arguments (deploy/k8s/base/deployment.yaml).
FROM python:3.11-slim-bookworm

WORKDIR /opt/bert-triton
COPY requirements.lock ./
# only what the server and the served Python models import; torch's CPU build from PyTorch's index
RUN grep -E '^(nvidia-pytriton|numpy|tokenizers|onnxruntime|torch|safetensors|protobuf|PyYAML)==' requirements.lock \
        > serve-requirements.txt \
 && python3 -m pip install --no-cache-dir -r serve-requirements.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu

COPY contract/ contract/
COPY server/ server/
COPY docker/triton-entrypoint.sh /usr/local/bin/triton-entrypoint.sh
COPY server/probe.py /usr/local/bin/triton-probe
# Triton's default --backend-directory is /opt/tritonserver/backends, as in NVIDIA's image
RUN PYTHONPATH=/opt/bert-triton python3 -m server install --no-perf-analyzer --no-prometheus \
 && ln -s /opt/bert-triton/.triton/tritonserver /opt/tritonserver \
 && ln -s /opt/tritonserver/bin/tritonserver /usr/local/bin/tritonserver \
 && chmod 0755 /usr/local/bin/triton-entrypoint.sh /usr/local/bin/triton-probe \
 && useradd --uid 1000 --user-group --no-create-home triton-server
ENV LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia_pytriton.libs:/usr/local/lib
USER 1000
ENTRYPOINT ["/usr/local/bin/triton-entrypoint.sh"]
