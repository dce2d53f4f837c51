# orch's image: Python 3.11, PyTorch, Ray and orch, with the repository at /opt/orch (conf/,
# search_spaces/, models/ and deploy/ are in the working directory).
#
#   docker build -t orch:latest .                                                  # CPU PyTorch
#   docker build -t orch:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
#
# docker-compose.yml builds both. No token or other secret is part of the image: the Ray
# authentication token reaches the containers at run time as a compose secret
# (RAY_AUTH_TOKEN_PATH=/run/secrets/ray_auth_token).
FROM python:3.11-slim

# The package index PyTorch is installed from: the CPU wheels by default, a CUDA index
# (https://download.pytorch.org/whl/cu124, ...) for GPU nodes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    ORCH_STORE=/shared/results

# PyTorch first, from its own index, so that installing orch finds it already satisfied.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch

# orch's other dependencies, read from pyproject.toml, in a layer of their own: editing orch's
# code does not reinstall Ray.
WORKDIR /opt/orch
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN pip install . \
    && cd / && python -c "import torch, ray, orchestrator; print('torch', torch.__version__, '| ray', ray.__version__)" \
    && orch --help > /dev/null \
    && mkdir -p /shared/results /tmp/ray

# The processes run as root inside the container: the token secret is bind-mounted with the
# host file's owner and mode 0600 (compose applies no uid/gid/mode to file secrets outside
# Swarm), and /shared may be any volume or bind mount; root can read and write both.
CMD ["bash"]
