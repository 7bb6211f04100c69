# simformer on a CUDA PyTorch base image.
#   docker build -t simformer .
#   docker run --gpus all -v /data:/datasets -v $PWD/runs:/work/runs simformer pipeline --workdir runs/syn
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    SIMFORMER_DATASETS=/datasets

WORKDIR /opt/simformer
COPY pyproject.toml README.md ./
COPY simformer_cli ./simformer_cli
COPY stages ./stages
# torch comes from the base image (CUDA build); pip keeps it because it already satisfies torch>=2.3.
RUN pip install . && simformer --version

WORKDIR /work
VOLUME ["/datasets", "/work/runs"]
ENTRYPOINT ["simformer"]
CMD ["--help"]
