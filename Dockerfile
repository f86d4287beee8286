# tracelet as a sidecar: follows a runs root mounted read-only at /runs and replays it into W&B.
#
#   docker build -t tracelet .
#   docker run -d --name tracelet \
#     --read-only --tmpfs /tmp:rw,nosuid,nodev,noexec,size=512m \
#     --cap-drop=ALL --security-opt no-new-privileges \
#     --memory=2g --memory-swap=2g --pids-limit=256 \
#     -v runs:/runs:ro -v tracelet-state:/var/lib/tracelet \
#     -e WANDB_API_KEY_FILE=/run/secrets/wandb_api_key \
#     -v "$PWD/wandb_api_key:/run/secrets/wandb_api_key:ro" \
#     tracelet watch /runs --project my-project
#
# The daemon writes only to the state volume (state, W&B's runs, cache, staging and config, HOME)
# and /tmp (wandb-core's socket and port file, W&B's media staging), so the root filesystem can
# be read-only; it needs no capability and never gains privileges.
#
# No key, no WANDB_MODE: W&B runs offline into the state volume (`wandb sync` them later).
# `docker stop` sends SIGTERM; tracelet (PID 1, exec-form entrypoint, its own handler) drains
# open runs within TRACELET_DRAIN_TIMEOUT seconds (8: inside docker stop's default 10 s grace),
# then exits; whatever was not confirmed by W&B by then is replayed on the next start.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs: the wheel is built from these (see .dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tracelet_daemon ./tracelet_daemon
COPY tracelet ./tracelet
# EXTRAS: optional backends baked in, e.g. --build-arg EXTRAS=mlflow (+~700 MiB) for
# TRACELET_BACKEND=wandb,mlflow; the default image is W&B only.
ARG EXTRAS=""
# prometheus-client serves --metrics-port (named here too in case the package lists it as optional).
RUN pip install --no-compile ".${EXTRAS:+[$EXTRAS]}" "prometheus-client>=0.17" \
    && rm -rf /src \
    && groupadd --system --gid 10001 tracelet \
    && useradd --system --uid 10001 --gid tracelet --home-dir /var/lib/tracelet \
               --no-create-home --shell /usr/sbin/nologin tracelet \
    && mkdir -p /var/lib/tracelet /runs \
    && chown tracelet:tracelet /var/lib/tracelet \
    && chmod 0700 /var/lib/tracelet

# State (offsets, journal, offline W&B runs) lives on a volume so restarts resume exactly once.
ENV HOME=/var/lib/tracelet \
    TRACELET_STATE_DIR=/var/lib/tracelet \
    WANDB_CONFIG_DIR=/var/lib/tracelet/wandb-config \
    TRACELET_DRAIN_TIMEOUT=8 \
    TRACELET_METRICS_HOST=0.0.0.0
VOLUME ["/var/lib/tracelet"]
WORKDIR /var/lib/tracelet

USER 10001:10001
STOPSIGNAL SIGTERM
# Prometheus metrics when TRACELET_METRICS_PORT=9464 (or --metrics-port 9464) is given. They
# listen on 0.0.0.0 (TRACELET_METRICS_HOST above) so a published port reaches them: publish on
# the host's loopback only (-p 127.0.0.1:9464:9464), or set TRACELET_METRICS_HOST=127.0.0.1 to
# keep them inside the container (Kubernetes: the pod). No authentication: never expose it widely.
EXPOSE 9464

# Alive (fresh heartbeat, pid running) and making progress; see `tracelet health --help`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["tracelet", "health"]

ENTRYPOINT ["tracelet"]
CMD ["watch", "/runs"]
