# cbir serve in a container: the package with the CPU build of torch, serving indexes mounted at /indexes.
#
#   docker build -t cbir .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/work:/indexes:ro" -v /path/to/images:/images:ro cbir \
#       --index /indexes/index-sift-141x2-he-holidays --index /indexes/index-rmac-holidays \
#       --benchmark holidays:/images/holidays
#
# Inside the container the server binds 0.0.0.0 so that the published port reaches it; publish it on
# 127.0.0.1 (as above) unless others should reach it. Image files are read where the index recorded
# them (its root, or the --benchmark folder): mount them at the same path.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of the pinned torch first: from PyPI, torch 2.13.0 is a CUDA build of several GB.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/cbir
COPY setup.cfg pyproject.toml README.md ./
COPY bovw bovw
COPY cnn cnn
COPY index index
COPY cbir cbir
RUN pip install --no-cache-dir . && useradd --create-home cbir
USER cbir
ENV CBIR_CACHE=/tmp/cbir-features

EXPOSE 8000
ENTRYPOINT ["cbir", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--help"]
