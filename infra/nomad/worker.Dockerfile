# The worker image: what a train or serve job's allocation runs under Nomad's docker driver
# (AIC_NOMAD_DRIVER=docker, the default). aic-worker at /usr/local/bin, with what it starts:
# Python 3 with PyTorch (CUDA 12.4), Horovod (MPI, Gloo and NCCL), Open MPI's mpirun, sshd
# and ssh for the MPI and horovodrun launchers, torchrun, and uWSGI for deployments.
#
# Build it from the repository root and push it where the miners pull from; the tag below is
# aic_core::scheduler::nomad::DEFAULT_IMAGE (the crate's version), and AIC_NOMAD_IMAGE names
# another:
#
#   docker build -f infra/nomad/worker.Dockerfile -t aic-worker:0.1.0 .
#   docker tag aic-worker:0.1.0 registry.pool.example/aic-worker:0.1.0
#   docker push registry.pool.example/aic-worker:0.1.0
#
# The miners run NVIDIA's container toolkit (check: `docker run --rm --gpus all
# nvidia/cuda:12.4.1-base-ubuntu22.04 nvidia-smi`) and Nomad's NVIDIA device plugin; Nomad
# then starts the container with the NVIDIA runtime and the allocation's GPUs only.

# Built on the runtime image's own Ubuntu release: a binary linked against a newer glibc
# than the image's (rust:*-bookworm has 2.36, Ubuntu 22.04 2.35) fails to start there
# ("GLIBC_2.36 not found"). `functions/tests/it/infra.rs` checks the two stay the same release.
FROM ubuntu:22.04 AS build
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p aic-worker --bin aic-worker

FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates python3 python3-venv python3-dev g++ make \
      openmpi-bin libopenmpi-dev openssh-server openssh-client \
    && rm -rf /var/lib/apt/lists/*
# One environment for every job's program, first on PATH (python3, torchrun, horovodrun, uwsgi).
ENV VIRTUAL_ENV=/opt/aic-py PATH=/opt/aic-py/bin:$PATH
RUN python3 -m venv /opt/aic-py \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu124 torch==2.5.1 \
    && pip install --no-cache-dir numpy scikit-learn mpi4py uwsgi==2.0.28
COPY examples/install_horovod.sh /tmp/install_horovod.sh
RUN AIC_HOROVOD_MPI=1 AIC_HOROVOD_NCCL=1 bash /tmp/install_horovod.sh /opt/aic-py && rm /tmp/install_horovod.sh
COPY --from=build /src/target/release/aic-worker /usr/local/bin/aic-worker
ENTRYPOINT []
CMD ["/usr/local/bin/aic-worker"]
