#!/bin/sh
# The work of the postgres-database example Promise
# (workflows/postgres-database.yaml), run by its `exec` steps:
#
#   postgres-database.sh create DATABASE ROLE
#       the role (LOGIN) and the database it owns, each unless it exists
#   postgres-database.sh configure DATABASE CONNECTION_LIMIT COMMENT
#       the database's connection limit and comment
#   postgres-database.sh drop DATABASE ROLE
#       the database (its sessions ended) and the role, each if it exists
#
# A database that exists but is not owned by ROLE is someone else's: both
# create and drop refuse it (exit 65) rather than adopt or drop it.
#
# Works on the server $PGURL names (the step passes
# `secrets.postgres_admin_url`; `fulfil dev` supplies its own Postgres).
# Prints one JSON object, the step's output, on stdout; errors go to
# stderr and exit non-zero, which fails the attempt (retried by the step's
# policy). Every action is idempotent: run twice, it leaves the server as
# run once, so retries and reconcile runs are safe.
#
# Names reach SQL only as psql variables quoted by format('%I') and
# :'literal', never spliced into the text; the Promise's schema restricts
# them as well.
set -eu

usage() {
    echo "usage: $0 create DATABASE ROLE | configure DATABASE CONNECTION_LIMIT COMMENT | drop DATABASE ROLE" >&2
    # EX_USAGE
    exit 64
}

: "${PGURL:?PGURL must name the Postgres server to work on}"

sql() {
    psql "$PGURL" --no-psqlrc --quiet --tuples-only --no-align -v ON_ERROR_STOP=1 "$@"
}

# An existing database is this Promise's only if ROLE owns it: someone
# else's is never taken over, nor dropped later.
check_owner() {
    owner=$(sql -v db="$1" <<'SQL'
SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'db';
SQL
)
    if [ -n "$owner" ] && [ "$owner" != "$2" ]; then
        echo "database \"$1\" exists and belongs to \"$owner\", not \"$2\": not touching it" >&2
        # EX_DATAERR
        exit 65
    fi
}

case "${1:-}" in
create)
    [ $# -eq 3 ] || usage
    check_owner "$2" "$3"
    sql -v db="$2" -v role="$3" <<'SQL'
SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') AS created \gset
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') WHERE :'created'::boolean \gexec
SELECT json_build_object(
    'database', :'db',
    'owner_role', :'role',
    'created', :'created'::boolean,
    'endpoint', coalesce(host(inet_server_addr()), 'localhost')
        || ':' || current_setting('port') || '/' || :'db');
SQL
    ;;
configure)
    [ $# -eq 4 ] || usage
    sql -v db="$2" -v connections="$3" -v comment="$4" <<'SQL'
SELECT format('ALTER DATABASE %I CONNECTION LIMIT %s', :'db', (:'connections')::int) \gexec
SELECT format('COMMENT ON DATABASE %I IS %L', :'db', :'comment') \gexec
SELECT json_build_object(
    'database', :'db',
    'connection_limit', (:'connections')::int,
    'comment', :'comment');
SQL
    ;;
drop)
    [ $# -eq 3 ] || usage
    check_owner "$2" "$3"
    sql -v db="$2" -v role="$3" <<'SQL'
SET client_min_messages = warning;
SELECT EXISTS (SELECT FROM pg_database WHERE datname = :'db') AS existed \gset
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SELECT format('DROP ROLE IF EXISTS %I', :'role') \gexec
SELECT json_build_object('database', :'db', 'owner_role', :'role', 'dropped', :'existed'::boolean);
SQL
    ;;
*)
    usage
    ;;
esac
