# The locust-milvus image: Locust with this project installed, for docker-compose.yml (master and workers) and the
# Kubernetes values in deploy/. Build: docker build -t locust-milvus:0.1.0 .
# Run: docker run --rm -p 8089:8089 locust-milvus:0.1.0 -f locustfiles/locustfile.py --host http://HOST:19530
#
# The project's embedded Milvus (the `milvus` wheel, x86_64 only) is installed too but is used only without --host;
# every deployment here gives --host, since workers on other machines cannot reach a master's loopback server.
FROM python:3.11-slim-bookworm

# A virtual environment at /opt/venv, the layout of the official locustio/locust image: the community Helm chart's
# default loadtest.locustCmd is /opt/venv/bin/locust, so the chart runs this image unchanged.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

WORKDIR /app
# The package first (pyproject.toml names README.md as its readme, so the build needs it), then the files that
# change more often. A plain (not editable) install: the image needs no source tree to import locust_milvus.
COPY pyproject.toml README.md ./
COPY locust_milvus ./locust_milvus
RUN pip install . && rm -rf build locust_milvus.egg-info

# Relative to WORKDIR /app, as in the repository: `-f locustfiles/locustfile.py`, `--config scenarios/...`
# and `--dataset data/...` work the same here as in a checkout.
COPY locustfiles ./locustfiles
COPY scenarios ./scenarios
COPY data ./data

# Locust needs no root. A fixed uid so that volumes and Kubernetes securityContext settings can name it; reports/
# is its own, so that `--html reports/run.html` works in the container as in a checkout.
RUN useradd --create-home --uid 1000 locust && mkdir -p reports && chown locust reports
USER locust

# 8089: the master's web UI; 5557: where workers connect to the master.
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["-f", "locustfiles/locustfile.py"]
