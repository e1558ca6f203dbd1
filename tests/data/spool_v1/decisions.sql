-- decisions.db as the release before schema versions made it (user_version 0): frozen.
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    rule TEXT NOT NULL,
    actions TEXT NOT NULL,
    status INTEGER NOT NULL,
    comment TEXT,
    config_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_sop ON decisions (sop_instance_uid);
CREATE INDEX IF NOT EXISTS decisions_series ON decisions (series_uid);
CREATE INDEX IF NOT EXISTS decisions_study ON decisions (study_uid);
