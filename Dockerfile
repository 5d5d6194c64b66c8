# mediaserver: WebRTC SFU. Build: docker build -t mediaserver .
#
# Run (API keys come from the environment; the image never uses --dev):
#   docker run -p 7880:7880 -p 40000-40199:40000-40199/udp \
#     -e MEDIASERVER_API_KEYS=app:<secret of 32+ random bytes> \
#     -e MEDIASERVER_ANNOUNCED_IP=<address clients reach> mediaserver
# Without a key the server exits with "no API keys configured". The UDP range published on
# the host must equal MEDIASERVER_UDP_PORT_RANGE, and behind Docker's NAT the ICE candidates
# need MEDIASERVER_ANNOUNCED_IP. Every setting: docs/configuration.md.
FROM python:3.11-slim AS build

# The packet path's C extension (mediaserver/sfu/_fastpath.c) needs a compiler; only this
# stage has one. Wheels of the project and every dependency go to /wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py ./
COPY mediaserver ./mediaserver
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c "import sys, zipfile, glob; names = zipfile.ZipFile(glob.glob('/wheels/mediaserver-*.whl')[0]).namelist(); sys.exit(0 if any('_fastpath' in n and n.endswith('.so') for n in names) else 'C extension missing from the wheel')"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels mediaserver \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 mediaserver \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mediaserver

WORKDIR /
USER 10001:10001

ENV MEDIASERVER_HOST=0.0.0.0 \
    MEDIASERVER_PORT=7880 \
    MEDIASERVER_UDP_PORT_RANGE=40000-40199

# Signalling, admin API, /healthz, /readyz, /metrics; then the media ports.
EXPOSE 7880/tcp
EXPOSE 40000-40199/udp

# The slim image has no curl: ask with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEDIASERVER_PORT', '7880'), timeout=4)"]

CMD ["mediaserver", "serve"]
