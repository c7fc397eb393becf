#!/usr/bin/env bash
# The local stack, without Docker: a private PostgreSQL 15 cluster with
# TimescaleDB preloaded and a private Mosquitto, both under .stack/ on
# non-default loopback ports.
#
#   scripts/stack.sh up      install what is missing, start both (idempotent)
#   scripts/stack.sh down    stop both
#   scripts/stack.sh reset   stop both and wipe their data
#   scripts/stack.sh status  say what runs
#
# Settings (environment): ANXIAO_STACK_DIR (.stack), ANXIAO_PG_PORT (55432),
# ANXIAO_MQTT_PORT (51883). Debian 12 ships no TimescaleDB, so `up` builds the
# Apache-2 edition from the next Debian suite's source package once per
# machine (docs/operations.md). Readiness is always a probe, never a sleep.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=${ANXIAO_STACK_DIR:-$ROOT/.stack}
PG_PORT=${ANXIAO_PG_PORT:-55432}
MQTT_PORT=${ANXIAO_MQTT_PORT:-51883}
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
# Development credentials: the stack listens on loopback only, and
# core/settings.py refuses these values outside ANXIAO_ENV=development.
PG_USER=anxiao
PG_PASSWORD=anxiao-dev
PG_DB=anxiao
MQTT_SERVICE_USER='svc~anxiao'   # '~' cannot occur in a device id
MQTT_SERVICE_PASSWORD=anxiao-dev
MQTT_GATEWAY_USER='gw~anxiao'    # publishes for any device (simulator, JT/T 808 gateway)
MQTT_GATEWAY_PASSWORD=anxiao-dev

PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR mosquitto mosquitto-clients
          libssl-dev cmake dpkg-dev build-essential)

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
# PostgreSQL refuses to run as root; as root we run it as the postgres user.
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
changed=0

# ---------------------------------------------------------------- packages
missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    is_root || die "missing Debian packages (run as root or install them): $missing"
    say "installing Debian packages: $(echo $missing)"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    changed=1
}

# ------------------------------------------------------------- timescaledb
timescaledb_present() {
    local lib share
    lib=$("$PG_BIN/pg_config" --pkglibdir)
    share=$("$PG_BIN/pg_config" --sharedir)
    [ -f "$lib/timescaledb.so" ] && [ -f "$share/extension/timescaledb.control" ]
}

next_suite() {
    case "$1" in
        bullseye) echo bookworm ;;
        bookworm) echo trixie ;;
        trixie) echo forky ;;
        *) die "do not know the Debian suite after '$1'" ;;
    esac
}

# The archive URI this machine already uses for its main suite, read from its
# own apt sources (deb822 or one-line format), so no mirror is ever hard-coded.
debian_archive_uri() {
    local codename=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$codename" '
            BEGIN { RS=""; FS="\n" }
            {
                uri=""; suites=""; types=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); uri=$i }
                    if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); suites=" " $i " " }
                    if ($i ~ /^Types:/)  { types=$i }
                }
                split(uri, u, " ")
                if (types ~ /deb/ && suites ~ (" " want " ")) { print u[1]; exit }
            }' "$f"
    done | head -n1
    if [ -f /etc/apt/sources.list ]; then
        awk -v want="$codename" '$1 == "deb" && $0 !~ /security/ {
            for (i = 2; i <= NF; i++) if ($i == want) { for (j = 2; j < i; j++) if ($j !~ /^\[/) uri=$j; print uri; exit }
        }' /etc/apt/sources.list
    fi
}

build_timescaledb() {
    is_root || die "TimescaleDB is not installed and building it needs root"
    local codename next uri keyring work
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    next=$(next_suite "$codename")
    uri=$(debian_archive_uri "$codename" | head -n1)
    [ -n "$uri" ] || die "cannot find the Debian archive for '$codename' in this machine's apt sources"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    work=$(mktemp -d /tmp/anxiao-timescaledb.XXXXXX)
    say "building TimescaleDB (Apache-2 edition) from Debian $next's source package (once per machine)"
    mkdir -p "$work/lists/partial" "$work/src"
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$next" "$keyring" >"$work/next.sources"
    # A private apt configuration: the machine's own sources stay untouched.
    local apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/parts"
                    -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
    mkdir -p "$work/parts" && mv "$work/next.sources" "$work/parts/"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$work/src" && apt-get "${apt_opts[@]}" source -qq --download-only timescaledb)
    (cd "$work/src" && dpkg-source -q -x ./*.dsc tsdb >"$work/extract.log" 2>&1)
    cmake -S "$work/src/tsdb" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DPG_CONFIG="$PG_BIN/pg_config" -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF \
        -DTAP_CHECKS=OFF -DUSE_TELEMETRY=OFF -DWARNINGS_AS_ERRORS=OFF >"$work/cmake.log" 2>&1 \
        || { tail -n 30 "$work/cmake.log"; die "cmake failed (log above)"; }
    make -C "$work/build" -j"$(nproc)" >"$work/make.log" 2>&1 \
        || { tail -n 30 "$work/make.log"; die "TimescaleDB build failed (log above)"; }
    make -C "$work/build" install >>"$work/make.log" 2>&1 || die "TimescaleDB install failed"
    rm -rf "$work"
    timescaledb_present || die "TimescaleDB built but its files are not where pg_config says"
    say "TimescaleDB installed"
    changed=1
}

# --------------------------------------------------------------- postgresql
PG_HOME=$STACK/pg
PG_DATA=$PG_HOME/data
PG_RUN=$PG_HOME/run

# When the checkout sits where the postgres user cannot reach (a home folder
# closed to others, say), the cluster lives in /var/lib/anxiao instead and
# .stack/pg points there.
place_pg_home() {
    [ -e "$PG_HOME" ] && return 0
    mkdir -p "$STACK"
    if is_root; then
        mkdir -p "$PG_HOME"
        chown postgres: "$PG_HOME"
        if ! runuser -u postgres -- test -w "$PG_HOME"; then
            rmdir "$PG_HOME"
            local alt
            alt=/var/lib/anxiao/$(printf '%s' "$STACK" | sha256sum | cut -c1-16)/pg
            mkdir -p "$alt" && chown postgres: "$alt"
            ln -s "$alt" "$PG_HOME"
        fi
    else
        mkdir -p "$PG_HOME"
    fi
}

pg_running() { [ -f "$PG_DATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }

pg_psql() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U postgres "$@"; }

pg_up() {
    place_pg_home
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
        say "creating the PostgreSQL cluster in $PG_DATA"
        as_pg mkdir -p "$PG_DATA" "$PG_RUN"
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=peer \
            --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        changed=1
    fi
    local conf="$PG_DATA/conf.d/anxiao.conf"
    local want
    want=$(cat <<EOF
# written by scripts/stack.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = 512MB
timezone = 'UTC'
log_min_messages = warning
EOF
)
    as_pg mkdir -p "$PG_DATA/conf.d" "$PG_RUN"
    grep -q "^include_dir = 'conf.d'" "$PG_DATA/postgresql.conf" \
        || echo "include_dir = 'conf.d'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
    if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" | as_pg tee "$conf" >/dev/null
        if pg_running; then
            say "PostgreSQL settings changed: restarting it"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
        fi
        changed=1
    fi
    if ! pg_running; then
        say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_HOME/postgres.log" -w -t 60 start >/dev/null \
            || { tail -n 20 "$PG_HOME/postgres.log" >&2; die "PostgreSQL did not start"; }
        changed=1
    fi
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 30 || die "PostgreSQL is not accepting connections"
    # Role and database; timescaledb in template1 so that every database
    # made from it (the test suite makes its own) already has the extension.
    pg_psql -d template1 -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb"
    # A superuser, as POSTGRES_USER is in the official image: dropping a test
    # database must end TimescaleDB's scheduler, a superuser backend that
    # attaches to any database living longer than its launcher's poll.
    case "$(pg_psql -d postgres -tAc "SELECT rolsuper FROM pg_roles WHERE rolname = '$PG_USER'")" in
        t) ;;
        f) pg_psql -d postgres -c "ALTER ROLE $PG_USER SUPERUSER"; changed=1 ;;
        *) pg_psql -d postgres -c "CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD'"
           changed=1 ;;
    esac
    if [ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
        pg_psql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
        changed=1
    fi
}

pg_down() {
    if pg_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
        say "PostgreSQL stopped"
    fi
}

# ---------------------------------------------------------------- mosquitto
MQ_HOME=$STACK/mqtt
MQ_PID=$MQ_HOME/mosquitto.pid

mq_running() { [ -f "$MQ_PID" ] && kill -0 "$(cat "$MQ_PID")" 2>/dev/null; }

mq_probe() {
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u "$MQTT_SERVICE_USER" -P "$MQTT_SERVICE_PASSWORD" \
        -t '$SYS/broker/version' -C 1 -W 2 >/dev/null 2>&1
}

mq_up() {
    mkdir -p "$MQ_HOME/data"
    local conf="$MQ_HOME/mosquitto.conf" want
    want=$(cat <<EOF
# written by scripts/stack.sh; docs/operations.md explains each setting
per_listener_settings false
listener $MQTT_PORT 127.0.0.1
allow_anonymous false
password_file $MQ_HOME/passwd
acl_file $MQ_HOME/acl
$(is_root && echo "user root")
pid_file $MQ_PID
log_dest file $MQ_HOME/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
# No reading lost: keep sessions and queued messages across restarts and
# never drop a queued message for a slow or disconnected persistent client.
persistence true
persistence_location $MQ_HOME/data/
autosave_interval 30
persistent_client_expiration 14d
max_inflight_messages 1000
max_queued_messages 0
max_queued_bytes 0
max_packet_size 1048576
EOF
)
    if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"$conf"
        if mq_running; then
            say "Mosquitto settings changed: restarting it"
            mq_down
        fi
        changed=1
    fi
    cat >"$MQ_HOME/acl.new" <<EOF
# written by scripts/stack.sh. A device (MQTT username = device id) may only
# publish below its own topic and subscribe to nothing.
pattern write anxiao/v1/dev/%u/#

# The service reads every device topic.
user $MQTT_SERVICE_USER
topic read anxiao/v1/dev/#
topic read \$SYS/#

# A gateway (the simulator, a JT/T 808 gateway) publishes for any device.
user $MQTT_GATEWAY_USER
topic write anxiao/v1/dev/#
EOF
    if ! cmp -s "$MQ_HOME/acl.new" "$MQ_HOME/acl"; then mv "$MQ_HOME/acl.new" "$MQ_HOME/acl"; changed=1; else rm "$MQ_HOME/acl.new"; fi
    touch "$MQ_HOME/passwd"
    # Device entries are added by `anxiao device secret`; keep them, add ours.
    local user pass
    for user in "$MQTT_SERVICE_USER" "$MQTT_GATEWAY_USER"; do
        if ! grep -q "^$user:" "$MQ_HOME/passwd"; then
            pass=$MQTT_SERVICE_PASSWORD
            [ "$user" = "$MQTT_GATEWAY_USER" ] && pass=$MQTT_GATEWAY_PASSWORD
            mosquitto_passwd -b "$MQ_HOME/passwd" "$user" "$pass"
            changed=1
        fi
    done
    chmod 600 "$MQ_HOME/passwd"
    if ! mq_running; then
        say "starting Mosquitto on 127.0.0.1:$MQTT_PORT"
        mosquitto -c "$conf" -d 2>>"$MQ_HOME/mosquitto.log"
        changed=1
    elif [ $changed = 1 ]; then
        kill -HUP "$(cat "$MQ_PID")"   # reload password file and ACL
    fi
    local i
    for i in $(seq 1 100); do
        mq_probe && return 0
        mq_running || { tail -n 20 "$MQ_HOME/mosquitto.log" >&2; die "Mosquitto exited"; }
        sleep 0.1
    done
    die "Mosquitto is not answering on 127.0.0.1:$MQTT_PORT"
}

mq_down() {
    if mq_running; then
        local pid
        pid=$(cat "$MQ_PID")
        kill "$pid"
        # SIGTERM makes Mosquitto save its persistence file; wait for it.
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$MQ_PID"
        say "Mosquitto stopped"
    fi
}

# -------------------------------------------------------------------- main
write_env() {
    local env="$STACK/env" want
    want=$(cat <<EOF
ANXIAO_DATABASE_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
ANXIAO_MQTT_URL=mqtt://$MQTT_SERVICE_USER:$MQTT_SERVICE_PASSWORD@127.0.0.1:$MQTT_PORT
ANXIAO_MQTT_GATEWAY_URL=mqtt://$MQTT_GATEWAY_USER:$MQTT_GATEWAY_PASSWORD@127.0.0.1:$MQTT_PORT
ANXIAO_MQTT_PASSWORD_FILE=$MQ_HOME/passwd
ANXIAO_MQTT_PID_FILE=$MQ_PID
EOF
)
    [ "$(cat "$env" 2>/dev/null)" = "$want" ] || printf '%s\n' "$want" >"$env"
}

cmd=${1:-up}
case "$cmd" in
    up)
        install_packages
        timescaledb_present || build_timescaledb
        pg_up
        mq_up
        write_env
        if [ $changed = 0 ]; then
            say "already up, nothing to do (PostgreSQL 127.0.0.1:$PG_PORT, Mosquitto 127.0.0.1:$MQTT_PORT)"
        else
            say "up (PostgreSQL 127.0.0.1:$PG_PORT, Mosquitto 127.0.0.1:$MQTT_PORT)"
        fi
        ;;
    down)
        mq_down
        [ -d "$PG_DATA" ] && pg_down
        say "down"
        ;;
    reset)
        mq_down
        [ -d "$PG_DATA" ] && pg_down
        if [ -L "$PG_HOME" ]; then rm -rf "$(readlink "$PG_HOME")"; fi
        rm -rf "$STACK"
        say "data wiped"
        ;;
    status)
        if pg_running; then say "PostgreSQL running on 127.0.0.1:$PG_PORT"; else say "PostgreSQL stopped"; fi
        if mq_running; then say "Mosquitto running on 127.0.0.1:$MQTT_PORT"; else say "Mosquitto stopped"; fi
        ;;
    *) die "usage: $0 up|down|reset|status" ;;
esac
