#!/usr/bin/env bash
# The production set-up of docs/OPERATIONS.md, run end to end on this host and torn down again:
#   1. the Postgres plugin in .venv (the `postgres` extra of pyproject.toml), if missing;
#   2. PostgreSQL from the Debian package (apt-get, only if missing), its cluster started if down,
#      a role and a database for Dagster;
#   3. $DAGSTER_HOME/dagster.yaml = deploy/dagster.yaml, byte for byte (credentials from the env);
#   4. the four simulators and a pipeline config pointing at them (warehouse under the work dir);
#   5. dagster-webserver and dagster-daemon against workspace.yaml, as two services would run;
#   6. one run launched through GraphQL (launchRun), queued, started by the daemon, waited for;
#   7. that run looked up in Postgres' `runs` table with psql;
#   8. everything it started stopped (services, simulators, the Postgres cluster if it was down
#      or installed by this run).
# Exit 0 only if the run succeeded and Postgres holds it as SUCCESS. Needs root or sudo (apt-get,
# the postgres system user). Knobs (environment):
#   RECIPE_WORK_DIR          work dir (DAGSTER_HOME, config, warehouse, logs); default: a new temp dir
#   DAGSTER_WEBSERVER_PORT   default 3000
#   SIM_PORTS                oracle_occ,crmcom,softwareone,agvance ports, default 8701,8702,8703,8704; 0 = free ports
#   SIM_SIZE                 invoices per simulated source, default 50
#   RECIPE_JOB               the job launched, default swo_incremental
#   DAGSTER_PG_DB/_USER      default dagster/dagster; DAGSTER_PG_PASSWORD default: a new random one
#   RECIPE_DROP_DB=1         drop that database and role at the end (tests)
#   RECIPE_TIMEOUT           seconds for the webserver to load and the run to finish, default 300
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
BIN="$REPO/.venv/bin"
log() { echo "[recipe] $*" >&2; }
[ -x "$PY" ] || bash "$REPO/scripts/setup.sh"   # .venv with the project (and its postgres extra)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "needs root or sudo (apt-get, the postgres system user)"; exit 2; }
  SUDO="sudo"
fi
as_postgres() { (cd / && if [ -z "$SUDO" ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi); }

WORK=${RECIPE_WORK_DIR:-$(mktemp -d /tmp/invoice_pipeline_recipe.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
WEB_PORT=${DAGSTER_WEBSERVER_PORT:-3000}
SIM_PORTS=${SIM_PORTS:-8701,8702,8703,8704}
SIM_SIZE=${SIM_SIZE:-50}
JOB=${RECIPE_JOB:-swo_incremental}
TIMEOUT=${RECIPE_TIMEOUT:-300}
export DAGSTER_PG_HOST=127.0.0.1
export DAGSTER_PG_DB=${DAGSTER_PG_DB:-dagster}
export DAGSTER_PG_USER=${DAGSTER_PG_USER:-dagster}
export DAGSTER_PG_PASSWORD=${DAGSTER_PG_PASSWORD:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}
export DAGSTER_HOME="$WORK/dagster_home"
export INVOICE_PIPELINE_CONFIG="$WORK/invoice_pipeline.yaml"
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

PIDS=()            # process groups this script started (each service runs in its own session)
PG_STARTED=""      # "version cluster" if this script started the cluster
DB_READY=""
cleanup() {
  status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true   # the group, with any run worker left behind
  done
  if [ -n "$DB_READY" ] && [ "${RECIPE_DROP_DB:-0}" = 1 ]; then
    as_postgres psql -q -p "$DAGSTER_PG_PORT" -v ON_ERROR_STOP=1 -v db="$DAGSTER_PG_DB" -v user="$DAGSTER_PG_USER" >/dev/null <<'SQL' || log "could not drop $DAGSTER_PG_DB"
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SELECT format('DROP ROLE IF EXISTS %I', :'user') \gexec
SQL
  fi
  if [ -n "$PG_STARTED" ]; then
    log "stopping the PostgreSQL cluster $PG_STARTED (this script started it)"
    # shellcheck disable=SC2086
    $SUDO pg_ctlcluster $PG_STARTED stop || true
  fi
  log "logs and data kept in $WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The Postgres storage plugin (the `postgres` extra), only if missing.
if ! "$PY" -c 'import dagster_postgres, psycopg2' 2>/dev/null; then
  log "installing the postgres extra into .venv"
  "$PY" -m pip install --quiet -e "$REPO[postgres]"
fi

# 2. PostgreSQL from Debian, only if missing; its cluster started if it is down.
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null)" ]; then
  log "installing PostgreSQL (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  PG_INSTALLED=1   # its cluster, if the package's install started it, is stopped at the end too
fi
read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${PG_VERSION:-}" ]; then
  PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  log "creating PostgreSQL cluster $PG_VERSION main"
  $SUDO pg_createcluster "$PG_VERSION" main >/dev/null
  read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS _ < <(pg_lsclusters -h | head -n 1)
fi
if [ "$PG_STATUS" != "online" ]; then
  log "starting PostgreSQL cluster $PG_VERSION $PG_CLUSTER (port $PG_PORT)"
  $SUDO pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  PG_STARTED="$PG_VERSION $PG_CLUSTER"
elif [ -n "${PG_INSTALLED:-}" ]; then
  PG_STARTED="$PG_VERSION $PG_CLUSTER"
fi
export DAGSTER_PG_PORT=$PG_PORT
for _ in $(seq 1 60); do as_postgres pg_isready -q -p "$PG_PORT" && break; sleep 0.5; done

# The role and database (idempotent; the role's password is set to DAGSTER_PG_PASSWORD, which goes
# to psql on stdin, never on a command line other users could read).
pw=${DAGSTER_PG_PASSWORD//\\/\\\\}
pw=${pw//\'/\'\'}
{ printf "\\set pw '%s'\n" "$pw"; cat <<'SQL'; } | as_postgres psql -q -p "$PG_PORT" -v ON_ERROR_STOP=1 \
  -v db="$DAGSTER_PG_DB" -v user="$DAGSTER_PG_USER" >/dev/null
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'user', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
unset pw
DB_READY=1
log "PostgreSQL $PG_VERSION on port $PG_PORT: database $DAGSTER_PG_DB, role $DAGSTER_PG_USER"

# 3. The instance: deploy/dagster.yaml as is.
mkdir -p "$DAGSTER_HOME"
cp "$REPO/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

# Each service in its own session (process group), so the cleanup also stops its children.
start() {  # name, command...
  local name=$1; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 < /dev/null &
  PIDS+=("$!")
  log "started $name (pid $!, log $WORK/$name.log)"
}
alive() {  # fails with the log's tail if a service died
  local pid
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "a service (pid $pid) exited early:"; tail -n 30 "$WORK"/*.log >&2; return 1
    fi
  done
}

# 4. The simulators and the config pointing at them.
start simulators "$PY" "$REPO/scripts/production_recipe.py" simulators --ports "$SIM_PORTS" --size "$SIM_SIZE" \
  --workdir "$WORK" --config "$INVOICE_PIPELINE_CONFIG" --ready "$WORK/simulators.ready"
for _ in $(seq 1 120); do [ -f "$WORK/simulators.ready" ] && break; alive; sleep 0.5; done
[ -f "$WORK/simulators.ready" ] || { log "the simulators did not start"; exit 1; }

# 5. The two services, from the project checkout (workspace.yaml loads invoice_pipeline.definitions).
cd "$REPO"
start webserver "$BIN/dagster-webserver" -w workspace.yaml -h 127.0.0.1 -p "$WEB_PORT"
start daemon "$BIN/dagster-daemon" run -w workspace.yaml

# 6. A run through GraphQL: queued by the webserver, started by the daemon.
PID_ARGS=(); for pid in "${PIDS[@]}"; do PID_ARGS+=(--pid "$pid"); done
RUN_ID=$("$PY" "$REPO/scripts/production_recipe.py" launch --url "http://127.0.0.1:$WEB_PORT" --job "$JOB" \
  --timeout "$TIMEOUT" "${PID_ARGS[@]}") || { alive || true; log "the run did not succeed; daemon log tail:"; tail -n 40 "$WORK/daemon.log" >&2; exit 1; }
alive

# 7. The run, as Postgres holds it.
ROW=$(PGPASSWORD="$DAGSTER_PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$DAGSTER_PG_USER" -d "$DAGSTER_PG_DB" \
  -v ON_ERROR_STOP=1 -At -v run_id="$RUN_ID" <<'SQL'
SELECT run_id, pipeline_name, status FROM runs WHERE run_id = :'run_id';
SQL
)
log "Postgres runs table: $ROW"
if [ "$ROW" != "$RUN_ID|$JOB|SUCCESS" ]; then
  log "expected $RUN_ID|$JOB|SUCCESS in the runs table"
  exit 1
fi
echo "recipe ok: run $RUN_ID of $JOB succeeded and is in Postgres ($DAGSTER_PG_DB.runs)"
