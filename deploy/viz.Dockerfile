# syntax=docker/dockerfile:1
# The dashboard image: `nmoe viz` over the metrics, the run registry and the token data of a shared /data volume.
# No CUDA: the dashboard only reads files. Build from the repository root (docs/cluster.md):
#   docker build -f deploy/viz.Dockerfile -t nmoe/viz:0.1.0 .

FROM ubuntu:24.04 AS node
RUN apt-get update \
  && apt-get install -y --no-install-recommends ca-certificates curl xz-utils \
  && rm -rf /var/lib/apt/lists/*
COPY deploy/install-node.sh /tmp/install-node.sh
RUN /tmp/install-node.sh && rm /tmp/install-node.sh

# As in deploy/Dockerfile: the production dependencies, where better-sqlite3 may compile.
FROM node AS deps
RUN apt-get update \
  && apt-get install -y --no-install-recommends g++ make python3 \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/nmoe
COPY package.json package-lock.json .npmrc ./
RUN npm_config_nodedir=/usr/local npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ubuntu:24.04 AS viz
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /opt/nmoe
COPY --from=deps /opt/nmoe/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY viz-dist ./viz-dist
RUN ln -s /opt/nmoe/bin/nmoe.js /usr/local/bin/nmoe \
  && groupadd --gid 10001 nmoe \
  && useradd --uid 10001 --gid nmoe --no-create-home --home-dir /data --shell /usr/sbin/nologin nmoe
# nmoe viz never writes here, but mount it read-write: SQLite cannot open the run registry (a WAL database) on a
# read-only mount once its writer has closed it.
VOLUME /data
# The nmoe user, by number so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
EXPOSE 3000
# Loopback, so the server's Host check stays on (docs/cluster.md): reach it with `kubectl port-forward` or
# `docker run -p 127.0.0.1:3000:3000 … --host 0.0.0.0` on a trusted machine.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:3000/api/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["nmoe", "viz"]
# The metrics dir, registry and data root default to /data/metrics, /data/experiments.db and /data.
CMD ["--host", "127.0.0.1", "--port", "3000"]
