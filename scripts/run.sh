#!/usr/bin/env bash
# `make run`: a private PostgreSQL 15 cluster under the data dir (reused on
# later runs), migrations, and reeld on REELD_LISTEN with dev auth and
# local providers.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${REELD_DATA_DIR:-./var}
mkdir -p "$DATA"
if [ -z "${DATABASE_URL:-}" ]; then
    # socket-only cluster: no TCP port to collide with
    PG_LISTEN="" scripts/pg.sh start "$DATA/pg" 5433
fi
LISTEN=${REELD_LISTEN:-127.0.0.1:8080}
cat <<EOT

reeld is starting on http://$LISTEN (dev auth, local providers).
Get a token and try it:

  TOKEN=\$(REELD_DATA_DIR=$DATA build/reeld token --sub alice --email alice@example.com)
  curl -s -X POST http://$LISTEN/api/organizations -H "Authorization: Bearer \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{"name":"Acme"}'
  curl -s http://$LISTEN/api/organizations/current -H "Authorization: Bearer \$TOKEN"

Stop with Ctrl-C. The database keeps running in $DATA/pg
(scripts/pg.sh stop $DATA/pg stops it).

EOT
export REELD_DATA_DIR=$DATA
exec build/reeld serve
