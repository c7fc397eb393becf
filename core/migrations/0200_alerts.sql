-- Alerts as episodes (contract §3): one row per episode of one kind on one
-- device, opened once, updated while it lasts, closed once; every change is
-- also an alert_events row, whose id is the SSE event id and the NOTIFY payload.

CREATE TABLE alerts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('speeding', 'route_deviation', 'out_of_hours',
                        'device_offline', 'smoke_alarm', 'panic_button', 'device_fault',
                        'clock_skew')),
    severity        text NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'cleared')),
    -- Distinguishes parallel episodes of one kind on one device (device_fault
    -- per fault source); '' when the kind has one episode at a time.
    episode_key     text NOT NULL DEFAULT '',
    late            boolean NOT NULL DEFAULT false,
    device_id       text NOT NULL,
    bus_id          text,
    school_id       text,
    operator_id     text,
    district_id     text,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    details         jsonb NOT NULL DEFAULT '{}',
    acknowledged    boolean NOT NULL DEFAULT false,
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution_note text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one open episode per (device, kind, key): opening is idempotent.
CREATE UNIQUE INDEX alerts_one_active ON alerts (device_id, kind, episode_key) WHERE state = 'active';
-- Replaying the same readings finds the same episode instead of a new one.
CREATE UNIQUE INDEX alerts_episode ON alerts (device_id, kind, episode_key, started_at);
CREATE INDEX alerts_started ON alerts (started_at DESC, id);
CREATE INDEX alerts_bus ON alerts (bus_id, started_at DESC);
CREATE INDEX alerts_school ON alerts (school_id, started_at DESC);
CREATE INDEX alerts_operator ON alerts (operator_id, started_at DESC);

CREATE TABLE alert_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id   uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    action     text NOT NULL CHECK (action IN ('open', 'update', 'close', 'ack', 'resolve')),
    at         timestamptz NOT NULL DEFAULT now(),
    by_whom    text,
    note       text
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- Movement filings (报备) and detours (contract §4 POST /filings).
CREATE TABLE filings (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bus_id     text NOT NULL REFERENCES buses (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('movement', 'detour')),
    valid_from timestamptz NOT NULL,
    valid_to   timestamptz NOT NULL,
    reason     text NOT NULL DEFAULT '',
    path       jsonb,                     -- GeoJSON LineString replacing the route (detour)
    filed_by   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_from < valid_to),
    CHECK (kind = 'detour' OR path IS NULL)
);
CREATE INDEX filings_bus ON filings (bus_id, valid_from);
