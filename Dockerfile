# syntax=docker/dockerfile:1
#
# prune-platform: the project installed with the README's own install command, for Ray clusters
# (the cluster launcher's docker.image in deploy/aws.yaml and deploy/gcp.yaml, the pods of
# deploy/kuberay-raycluster.yaml) and for single-machine runs.  How to build, push and use it:
# docs/cluster.md.
#
#   docker build -t ghcr.io/<OWNER>/prune-platform:<TAG> .
#   docker run --rm ghcr.io/<OWNER>/prune-platform:<TAG>          # python -m study.lottery --help
#
# One image serves the head, the CPU workers and the GPU workers: every node of a Ray cluster must
# run the same Ray and Python versions.  It runs on GPU nodes as it is: the torch wheel that pip
# installs carries its CUDA libraries (the node needs the NVIDIA driver that wheel asks for and the
# NVIDIA container toolkit, nothing else).
#
# Build arguments:
#   BASE_IMAGE           another Debian/Ubuntu base, e.g. an NVIDIA CUDA runtime image
#                        (--build-arg BASE_IMAGE=nvidia/cuda:<version>-runtime-ubuntu24.04); pin a tag
#                        (or a digest), never latest.  Without python3 in it, the distribution's
#                        python3 and python3-venv are installed.
#   PIP_EXTRA_INDEX_URL  e.g. https://download.pytorch.org/whl/cpu for a CPU-only torch: a much
#                        smaller image, for clusters without GPUs.  pip reads it from the environment,
#                        so the install command stays the README's.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG PIP_EXTRA_INDEX_URL

# openssh-client and rsync: the cluster launcher's autoscaler runs in the head's container and sets
# up new workers over ssh/rsync, and copies files in and out of containers with rsync.  wget: KubeRay's
# default health probes.  python3 and python3-venv only where the base image has no python3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync wget \
      $(command -v python3 >/dev/null 2>&1 || echo python3 python3-venv) \
 && rm -rf /var/lib/apt/lists/*

# A non-root user, uid 1000 like the ssh user of the cloud images and the `ray` user of Ray's own
# images (a base image's own uid-1000 user, e.g. Ubuntu's `ubuntu`, gives way).
RUN existing="$(getent passwd 1000 | cut -d: -f1)"; \
    if [ -n "$existing" ]; then userdel --remove "$existing" 2>/dev/null || userdel "$existing"; fi; \
    useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir /app && chown ray:ray /app \
 && echo 'export PATH="/app/.venv/bin:$PATH"' > /etc/profile.d/prune-platform.sh

# The venv first on PATH.  The launcher (`bash --login`) and KubeRay (`bash -lc`) start Ray in
# login shells, where /etc/profile resets PATH: /etc/profile.d/prune-platform.sh puts it back.
# NVIDIA_*: let the NVIDIA container runtime (which the launcher selects on GPU nodes) expose the
# GPUs and the driver's compute libraries; without that runtime they do nothing.
ENV HOME=/home/ray \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PRUNE_PLATFORM_IMAGE=1

USER ray
WORKDIR /app

COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray study/ study/
COPY --chown=ray:ray trainables/ trainables/
COPY --chown=ray:ray search_spaces/ search_spaces/
COPY --chown=ray:ray analysis/ analysis/
COPY --chown=ray:ray scripts/ scripts/

# The README's install command with --no-system-packages (tests/test_deploy.py holds the two equal):
# the image runs studies, not the browser test, so it skips the test suite's Debian packages.  It installs
# the Ray version pyproject.toml pins (ray[tune]==2.60.*).
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=1000 \
    scripts/setup --no-system-packages

# What a cluster needs beyond the project, at exactly the Ray version just installed (read back
# from it, never resolved again): ray[default] (dashboard, job submission, the autoscaler's
# monitor, KubeRay's health endpoints), boto3 and google-api-python-client (the AWS and GCP node
# providers the autoscaler runs on the head).
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=1000 \
    ray_version="$(python -c 'import ray; print(ray.__version__)')" \
 && pip install "ray[default]==${ray_version}" boto3 google-api-python-client \
 && pip check

# Tests and benchmarks last, so that editing them does not invalidate the install layers.
COPY --chown=ray:ray tests/ tests/
COPY --chown=ray:ray benchmarks/ benchmarks/

CMD ["python", "-m", "study.lottery", "--help"]
