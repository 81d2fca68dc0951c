#!/bin/bash
# Two databases on the one PostgreSQL server: Airflow's metadata (POSTGRES_DB) and the hub's own.
# Runs once, when the data volume is created; the hub's password comes from .env (CGTHUB_DB_PASSWORD).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$CGTHUB_DB_PASSWORD" <<'SQL'
CREATE USER cgthub WITH PASSWORD :'password';
CREATE DATABASE cgthub OWNER cgthub;
SQL
