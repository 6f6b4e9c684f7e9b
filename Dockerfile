# The rewardstream worker image. `docker compose up` builds it; Kubernetes pulls
# the published copy (k8s/statefulset.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid: Kubernetes can only verify runAsNonRoot for a numeric
# USER, and k8s/statefulset.yaml uses the same ids for runAsUser and fsGroup.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" rewardstream \
 && useradd --system --uid "${UID}" --gid "${GID}" --create-home \
        --home-dir /home/rewardstream --shell /usr/sbin/nologin rewardstream

# pyproject.toml and the three packages are all `pip install .` needs;
# constraints.txt pins the dependencies to the versions the tests ran with. The
# source tree is removed afterwards, only the installed package stays.
WORKDIR /tmp/src
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY streams ./streams
COPY topologies ./topologies
RUN pip install --constraint constraints.txt . \
 && rm -rf /tmp/src

# The shipped reward programs are package data (installed above); this copy is
# the file REWARDSTREAM_PROGRAM below reads by path: mount your own over
# /etc/rewardstream/programs, or point the setting at another file.
COPY app/programs/shipped /etc/rewardstream/programs

# Worker state. Created and chowned before VOLUME so that a fresh named volume
# (compose) starts out owned by the worker's user.
RUN mkdir -p /var/lib/rewardstream \
 && chown "${UID}:${GID}" /var/lib/rewardstream
VOLUME ["/var/lib/rewardstream"]

# Settings default to 127.0.0.1, which nothing outside the container can reach.
ENV REWARDSTREAM_WEB_HOST=0.0.0.0 \
    REWARDSTREAM_DATA_DIR=/var/lib/rewardstream \
    REWARDSTREAM_PROGRAM=/etc/rewardstream/programs/retail-loyalty.yaml

WORKDIR /home/rewardstream
USER ${UID}:${GID}

# /metrics, /health and /ready (REWARDSTREAM_WEB_PORT, default 6066).
EXPOSE 6066

CMD ["rewardstream", "worker"]
