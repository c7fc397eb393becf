-- anxiao initial schema: reference data (fleet registry), telemetry
-- hypertables with natural keys for idempotent insert, dead letters, device
-- status and credentials. Times are timestamptz (stored UTC).

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- ------------------------------------------------------------ fleet registry
CREATE TABLE fleet_meta (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    timezone    text NOT NULL DEFAULT 'Asia/Shanghai',
    imported_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE districts (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    area       jsonb,                      -- GeoJSON Polygon/MultiPolygon, [lon, lat]
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE operators (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    email      text,
    webhook    text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schools (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    district_id text REFERENCES districts (id),
    lon         double precision,
    lat         double precision,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE routes (
    id         text PRIMARY KEY,
    school_id  text REFERENCES schools (id),
    corridor_m double precision NOT NULL DEFAULT 100 CHECK (corridor_m > 0),
    path       jsonb NOT NULL,             -- GeoJSON LineString
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE buses (
    id              text PRIMARY KEY,
    plate           text NOT NULL,
    operator_id     text REFERENCES operators (id),
    school_id       text REFERENCES schools (id),
    service_windows jsonb NOT NULL DEFAULT '[]',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bus_routes (
    bus_id   text NOT NULL REFERENCES buses (id) ON DELETE CASCADE,
    route_id text NOT NULL REFERENCES routes (id) ON DELETE CASCADE,
    PRIMARY KEY (bus_id, route_id)
);

-- `key` is the compact integer that telemetry rows carry: one int4 key and
-- one unique index per hypertable insert about 1.5x faster than a text key.
-- A pruned device is retired, not deleted, so its history keeps its id.
CREATE TABLE devices (
    key             integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    kind            text NOT NULL CHECK (kind IN ('gps', 'smoke', 'button')),
    bus_id          text REFERENCES buses (id) ON DELETE SET NULL,
    school_id       text REFERENCES schools (id) ON DELETE SET NULL,
    offline_after_s integer CHECK (offline_after_s > 0),
    registered_at   timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE speed_zones (
    id         text PRIMARY KEY,
    limit_kmh  double precision NOT NULL CHECK (limit_kmh > 0),
    area       jsonb NOT NULL,             -- GeoJSON Polygon/MultiPolygon
    valid_from timestamptz,
    valid_to   timestamptz,
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_from IS NULL OR valid_to IS NULL OR valid_from < valid_to)
);

-- The calendar is replaced as a whole on import (contract §2).
CREATE TABLE calendar_breaks (
    start_date date NOT NULL,
    end_date   date NOT NULL,
    name       text NOT NULL DEFAULT '',
    PRIMARY KEY (start_date, end_date),
    CHECK (start_date <= end_date)
);

CREATE TABLE calendar_overrides (
    day  date PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('school_day', 'day_off'))
);

-- ----------------------------------------------------------------- telemetry
-- One unique index per hypertable, on the natural key; no default time index.
CREATE TABLE gps_fixes (
    device_key  integer NOT NULL,
    ts          timestamptz NOT NULL,      -- device time of the fix
    received_at timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   real,                      -- NULL when the device sent none
    heading_deg real,
    alt_m       real,
    sats        smallint,
    hdop        real,
    seq         bigint,
    alarm       bigint,                    -- JT/T 808 alarm DWORD
    status      bigint,                    -- JT/T 808 status DWORD
    backfill    boolean NOT NULL DEFAULT false
);
SELECT create_hypertable('gps_fixes', by_range('ts', INTERVAL '1 day'), create_default_indexes => false);
CREATE UNIQUE INDEX gps_fixes_natural_key ON gps_fixes (device_key, ts);

CREATE TABLE sensor_events (
    device_key  integer NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('smoke', 'button')),
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    state       text NOT NULL,             -- smoke state or button event
    obscuration real,                      -- %/m
    battery_pct real
);
SELECT create_hypertable('sensor_events', by_range('ts', INTERVAL '1 day'), create_default_indexes => false);
CREATE UNIQUE INDEX sensor_events_natural_key ON sensor_events (device_key, channel, ts);

CREATE TABLE heartbeats (
    device_key  integer NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    battery_pct real,
    rssi_dbm    real
);
SELECT create_hypertable('heartbeats', by_range('ts', INTERVAL '1 day'), create_default_indexes => false);
CREATE UNIQUE INDEX heartbeats_natural_key ON heartbeats (device_key, ts);

-- Every message that is not stored as telemetry is stored here (contract §1).
CREATE TABLE dead_letters (
    received_at timestamptz NOT NULL,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('bad_json', 'bad_topic', 'unknown_device',
                    'missing_field', 'out_of_range', 'bad_time', 'too_large')),
    detail      text NOT NULL DEFAULT '',
    device_id   text
);
SELECT create_hypertable('dead_letters', by_range('received_at', INTERVAL '1 day'));
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at DESC);

-- Latest message of each device: receive time, event time and clock offset.
CREATE TABLE device_status (
    device_key     integer PRIMARY KEY REFERENCES devices (key),
    last_seen_at   timestamptz NOT NULL,  -- receive time of the latest message
    last_event_at  timestamptz NOT NULL,  -- event time (ts) of the latest message
    clock_offset_s real                   -- ts - receive time of the latest live message
);

-- --------------------------------------------------------------- credentials
CREATE TABLE api_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,     -- SHA-256 of the token; the token is shown once
    role       text NOT NULL CHECK (role IN ('admin', 'bureau', 'monitor', 'school', 'operator')),
    scope_id   text,
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CHECK ((role IN ('school', 'operator')) = (scope_id IS NOT NULL))
);

-- A device's MQTT password is derived from the service secret key and its
-- generation; rotating bumps the generation. No password is stored.
CREATE TABLE device_credentials (
    device_id  text PRIMARY KEY REFERENCES devices (id),
    generation integer NOT NULL DEFAULT 1 CHECK (generation > 0),
    issued_at  timestamptz NOT NULL DEFAULT now()
);
