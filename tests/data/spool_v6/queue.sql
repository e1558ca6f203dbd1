-- queue.db as release 6 of the schema (commitments, paused, deliveries_changed) made it (user_version 6): frozen.
CREATE TABLE objects (
    id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL
, series_number INTEGER, instance_number INTEGER, rule TEXT NOT NULL DEFAULT '');
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    object_id TEXT NOT NULL REFERENCES objects(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL
, collect TEXT, batch INTEGER);
CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt_at);
CREATE INDEX deliveries_object ON deliveries (object_id);
CREATE INDEX objects_uid ON objects (sop_instance_uid);
CREATE TABLE received_units (
    level TEXT NOT NULL,            
    uid TEXT NOT NULL,              
    study_uid TEXT NOT NULL,        
    calling_ae TEXT NOT NULL,       
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    count INTEGER NOT NULL,         
    late INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'collecting',  
    reason TEXT,                    
    completed_at REAL,
    PRIMARY KEY (level, uid)
);
CREATE INDEX received_units_state ON received_units (state, last_at);
CREATE INDEX deliveries_batch ON deliveries (batch) WHERE batch IS NOT NULL;
CREATE INDEX deliveries_held ON deliveries (collect, state) WHERE state = 'held';
CREATE TABLE kicks (
    destination TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE commitments (
    transaction_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,       
    called_ae TEXT NOT NULL,        
    peer TEXT NOT NULL,             
    received_at REAL NOT NULL,
    deadline REAL NOT NULL,         
    state TEXT NOT NULL DEFAULT 'pending',  
    event_type INTEGER,             
    attempts INTEGER NOT NULL DEFAULT 0,    
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    reported_at REAL,
    lease_at REAL                   
);
CREATE TABLE commitment_items (
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid),
    position INTEGER NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    failure INTEGER,                
    decided INTEGER NOT NULL DEFAULT 0,  
    PRIMARY KEY (transaction_uid, position)
);
CREATE INDEX commitments_due ON commitments (state, next_attempt_at);
CREATE TABLE paused (
    destination TEXT PRIMARY KEY,
    by TEXT NOT NULL,       
    at REAL NOT NULL
);
CREATE INDEX deliveries_changed ON deliveries (updated_at, id);
PRAGMA user_version=6;
