-- The 政协云 domain (DOMAIN.md). Applications write these tables with plain SQL.
-- Every table: id uuid (immutable; derived from the natural key where one is
-- declared) and org_code, the owning committee (immutable). Replication rules
-- are in syncd/schema/declarations.py, not here.

CREATE TABLE committees (
    id          uuid GENERATED ALWAYS AS (syncd.natural_id('committees', code)) STORED PRIMARY KEY,
    org_code    text NOT NULL,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[0-9]{6}$'),
    name        text NOT NULL,
    level       text NOT NULL CHECK (level IN ('national', 'province', 'city', 'county')),
    parent_code text,
    aliases     text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE sectors (
    id            uuid GENERATED ALWAYS AS (syncd.natural_id('sectors', org_code || chr(31) || code)) STORED PRIMARY KEY,
    org_code      text NOT NULL,
    code          text NOT NULL,
    name          text NOT NULL,
    national_code smallint CHECK (national_code BETWEEN 1 AND 34)
);

CREATE TABLE members (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_code          text NOT NULL,
    name              text NOT NULL,
    gender            text CHECK (gender IN ('男', '女')),
    ethnicity         text,
    birth_month       text CHECK (birth_month ~ '^[0-9]{4}-[0-9]{2}$'),
    id_card_no        text,
    id_card_hash      text,
    mobile            text,
    address           text,
    party             text,
    sector_code       text,
    work_unit         text,
    title             text,
    role              text NOT NULL DEFAULT '委员',
    term              text,
    special_committee text,
    status            text NOT NULL DEFAULT '在任'
                      CHECK (status IN ('在任', '撤销委员资格', '辞去', '去世', '届满')),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_code, id_card_no)
);

CREATE TABLE activities (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_code           text NOT NULL,
    parent_activity_id uuid,
    kind               text NOT NULL,
    title              text NOT NULL,
    starts_at          timestamptz NOT NULL,
    ends_at            timestamptz,
    place              text,
    online             boolean NOT NULL DEFAULT false,
    half_days          smallint NOT NULL DEFAULT 1 CHECK (half_days >= 0),
    status             text NOT NULL DEFAULT '已发布',
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attendance (
    id             uuid GENERATED ALWAYS AS
                   (syncd.natural_id('attendance', activity_id::text || chr(31) || member_id::text)) STORED PRIMARY KEY,
    org_code       text NOT NULL,
    activity_id    uuid NOT NULL REFERENCES activities (id),
    member_id      uuid NOT NULL,
    status         text NOT NULL DEFAULT '出席' CHECK (status IN ('出席', '请假', '缺席', '迟到早退')),
    sign_in_at     timestamptz,
    sign_in_method text CHECK (sign_in_method IN ('扫码', '定位', '人工')),
    spoke          boolean NOT NULL DEFAULT false,
    written_speech boolean NOT NULL DEFAULT false,
    leave_reason   text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attendance_member ON attendance (member_id);

CREATE TABLE proposals (
    id           uuid GENERATED ALWAYS AS (syncd.natural_id('proposals',
                 org_code || chr(31) || term::text || chr(31) || session::text || chr(31) || seq::text)) STORED PRIMARY KEY,
    org_code     text NOT NULL,
    term         smallint NOT NULL,
    session      smallint NOT NULL,
    seq          integer NOT NULL,
    title        text NOT NULL,
    body         text,
    category     text,
    proposer_id  uuid,
    kind         text NOT NULL DEFAULT '个人' CHECK (kind IN ('个人', '联名', '集体')),
    status       text NOT NULL DEFAULT '已提交',
    key_flag     boolean NOT NULL DEFAULT false,
    supervised   boolean NOT NULL DEFAULT false,
    excellent    boolean NOT NULL DEFAULT false,
    submitted_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE proposal_cosigners (
    id          uuid GENERATED ALWAYS AS
                (syncd.natural_id('proposal_cosigners', proposal_id::text || chr(31) || member_id::text)) STORED PRIMARY KEY,
    org_code    text NOT NULL,
    proposal_id uuid NOT NULL REFERENCES proposals (id) ON DELETE CASCADE,
    member_id   uuid NOT NULL,
    confirmed   boolean NOT NULL DEFAULT false
);

CREATE TABLE proposal_handlings (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_code        text NOT NULL,
    proposal_id     uuid NOT NULL REFERENCES proposals (id),
    handling_unit   text NOT NULL,
    role            text NOT NULL DEFAULT '主办' CHECK (role IN ('主办', '协办', '会办')),
    answer_category text CHECK (answer_category IN ('A', 'B', 'C')),
    answer_text     text,
    answered_at     timestamptz,
    evaluation      text CHECK (evaluation IN ('满意', '基本满意', '不满意'))
);

CREATE TABLE opinion_reports (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_code      text NOT NULL,
    author_id     uuid,
    title         text NOT NULL,
    body          text,
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL DEFAULT '已报送',
    contact_phone text
);

CREATE TABLE opinion_adoptions (
    id                uuid GENERATED ALWAYS AS
                      (syncd.natural_id('opinion_adoptions', report_id::text || chr(31) || level)) STORED PRIMARY KEY,
    org_code          text NOT NULL,
    report_id         uuid NOT NULL REFERENCES opinion_reports (id),
    level             text NOT NULL CHECK (level IN ('county', 'city', 'province', 'national')),
    adopted_at        timestamptz NOT NULL DEFAULT now(),
    instruction_level text CHECK (instruction_level IN ('county', 'city', 'province', 'national')),
    instruction_text  text
);

CREATE TABLE micro_suggestions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_code        text NOT NULL,
    member_id       uuid,
    title           text NOT NULL,
    body            text,
    submitted_at    timestamptz NOT NULL DEFAULT now(),
    adopted         boolean NOT NULL DEFAULT false,
    submitter_phone text
);

CREATE TABLE score_rules (
    id           uuid GENERATED ALWAYS AS (syncd.natural_id('score_rules',
                 org_code || chr(31) || rule_version::text || chr(31) || event)) STORED PRIMARY KEY,
    org_code     text NOT NULL,
    rule_version integer NOT NULL,
    event        text NOT NULL,
    points       numeric NOT NULL,
    cap          numeric,
    valid_from   date NOT NULL DEFAULT '2000-01-01'
);

CREATE TABLE member_score_summaries (
    id            uuid GENERATED ALWAYS AS
                  (syncd.natural_id('member_score_summaries', member_id::text || chr(31) || year::text)) STORED PRIMARY KEY,
    org_code      text NOT NULL,
    member_id     uuid NOT NULL REFERENCES members (id),
    year          integer NOT NULL,
    total         numeric NOT NULL,
    by_category   jsonb NOT NULL,
    rule_version  integer NOT NULL,
    inputs_digest text NOT NULL,
    computed_at   timestamptz NOT NULL DEFAULT now()
);
