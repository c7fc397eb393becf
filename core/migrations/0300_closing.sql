-- Closing the loop (issue 7): the hazard ledger (隐患台账), violation notices
-- to operators, the delivery outbox (webhook, e-mail) and the daily digests.

-- ------------------------------------------------------------- hazard ledger
-- Columns of seed 002's ledger: 风险名称 name, 风险表述 description, 风险等级
-- level, 化解措施 measures, 责任部门 responsible_unit, 责任人员
-- responsible_person, plus 限期整改 deadline. The closed loop of seed 001:
-- 排查 found → 登记 registered → 整治 rectifying → 报告 reported → 销账 closed.
CREATE TABLE hazards (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL CHECK (length(name) > 0),
    description          text NOT NULL DEFAULT '',
    level                text NOT NULL CHECK (level IN ('general', 'major', 'serious')),
    category             text NOT NULL CHECK (category IN ('school_bus', 'fire', 'public_security',
                             'food', 'laboratory', 'buildings', 'other')),
    measures             text NOT NULL DEFAULT '',
    responsible_unit     text NOT NULL DEFAULT '',
    responsible_person   text NOT NULL DEFAULT '',
    deadline             date,
    source               text NOT NULL CHECK (source IN ('self_check', 'special_check',
                             'spot_check', 'peer_check', 'inspection', 'monitoring')),
    -- Monitoring rule that found it, and what it is about (device, bus, school or notice id).
    rule                 text CHECK (rule IN ('device_offline', 'repeat_offender',
                             'button_untested', 'zero_data', 'notice_unanswered')),
    subject              text,
    -- Idempotency key of an automatic entry: rule, subject and the episode it belongs to.
    auto_key             text UNIQUE,
    state                text NOT NULL DEFAULT 'found' CHECK (state IN ('found', 'registered',
                             'rectifying', 'reported', 'closed')),
    supervised           boolean NOT NULL DEFAULT false,   -- 挂牌督办
    supervised_at        timestamptz,
    delay_reason         text,                             -- written reason for missing a deadline
    school_id            text,
    bus_id               text,
    operator_id          text,
    district_id          text,
    device_id            text,
    reported_by          text,
    reported_by_token    bigint,
    closed_by            text,
    closed_at            timestamptz,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Monitoring: first and latest detection, and when the condition went away.
    detected_at          timestamptz,
    last_detected_at     timestamptz,
    condition_cleared_at timestamptz,
    details              jsonb NOT NULL DEFAULT '{}',
    CHECK ((source = 'monitoring') = (rule IS NOT NULL)),
    CHECK ((rule IS NULL) = (auto_key IS NULL))
);
-- One ongoing automatic entry per rule and subject: it is updated while it lasts.
CREATE UNIQUE INDEX hazards_auto_ongoing ON hazards (rule, subject)
    WHERE rule IS NOT NULL AND condition_cleared_at IS NULL;
CREATE INDEX hazards_created ON hazards (created_at DESC, id);
CREATE INDEX hazards_open_deadline ON hazards (deadline) WHERE state <> 'closed';
CREATE INDEX hazards_school ON hazards (school_id);
CREATE INDEX hazards_operator ON hazards (operator_id);

-- Every transition, note and detection of an entry: who, when, what.
CREATE TABLE hazard_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hazard_id  bigint NOT NULL REFERENCES hazards (id) ON DELETE CASCADE,
    action     text NOT NULL CHECK (action IN ('create', 'register', 'rectify', 'report',
                   'close', 'reject', 'note', 'detect', 'clear', 'supervise', 'postpone')),
    from_state text,
    to_state   text,
    at         timestamptz NOT NULL DEFAULT now(),
    by_whom    text NOT NULL,
    by_token   bigint,
    note       text NOT NULL DEFAULT '',
    evidence   text NOT NULL DEFAULT ''
);
CREATE INDEX hazard_events_hazard ON hazard_events (hazard_id, id);
CREATE INDEX hazard_events_at ON hazard_events (at);

CREATE TABLE hazard_alerts (
    hazard_id bigint NOT NULL REFERENCES hazards (id) ON DELETE CASCADE,
    alert_id  uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    linked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hazard_id, alert_id)
);
CREATE INDEX hazard_alerts_alert ON hazard_alerts (alert_id);

-- ------------------------------------------------------- violation notices
-- A notice tells an operator about major violations of its buses; ordinary
-- ones are batched (one pending notice per operator), critical ones go alone.
CREATE TABLE notices (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operator_id   text NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent',
                      'answered', 'escalated')),
    critical      boolean NOT NULL DEFAULT false,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    answer_due_at timestamptz,
    response      text,
    responded_at  timestamptz,
    responded_by  text,
    hazard_id     bigint REFERENCES hazards (id) ON DELETE SET NULL,
    escalated_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'pending' OR sent_at IS NOT NULL)
);
CREATE UNIQUE INDEX notices_one_batch ON notices (operator_id) WHERE state = 'pending' AND NOT critical;
CREATE INDEX notices_operator ON notices (operator_id, id DESC);
CREATE INDEX notices_due ON notices (answer_due_at) WHERE state = 'sent';

-- Each violation is in exactly one notice.
CREATE TABLE notice_items (
    alert_id  uuid PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    notice_id bigint NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    added_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notice_items_notice ON notice_items (notice_id);

-- The shared secret each operator's webhook deliveries are signed with.
CREATE TABLE operator_webhook_secrets (
    operator_id text PRIMARY KEY REFERENCES operators (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- ------------------------------------------------------------------ outbox
-- Written in the same transaction as what it announces; a worker delivers it
-- with retries, so a crash loses nothing (architecture decision 6).
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'email')),
    target          text NOT NULL,          -- URL or e-mail address(es)
    event           text NOT NULL CHECK (event IN ('notice', 'digest')),
    notice_id       bigint REFERENCES notices (id) ON DELETE CASCADE,
    operator_id     text,
    body            bytea NOT NULL,         -- JSON (webhook) or an RFC 5322 message (email)
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered',
                        'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_notice ON outbox (notice_id);

-- ----------------------------------------------------------------- digests
-- The scheduled digest of each local day is built and mailed once.
CREATE TABLE digest_runs (
    day      date PRIMARY KEY,
    built_at timestamptz NOT NULL DEFAULT now(),
    content  jsonb NOT NULL
);
