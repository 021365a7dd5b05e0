-- The schema a v0.5.0 gateway made (create_all of its store/models.py, on SQLite).
CREATE TABLE tasks (
	task_id VARCHAR(64) NOT NULL, 
	name VARCHAR(200), 
	status VARCHAR(16) NOT NULL, 
	task_type VARCHAR(16) NOT NULL, 
	device VARCHAR(8) NOT NULL, 
	gpus INTEGER NOT NULL, 
	gpu_id INTEGER, 
	gpu_ids JSON NOT NULL, 
	priority INTEGER NOT NULL, 
	timeout FLOAT NOT NULL, 
	entry_point VARCHAR(500) NOT NULL, 
	args JSON NOT NULL, 
	env JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	return_code INTEGER, 
	error TEXT, 
	failure_reason VARCHAR(16), 
	progress FLOAT NOT NULL, 
	progress_message TEXT, 
	model_id VARCHAR(64), 
	save_model BOOLEAN NOT NULL, 
	model_name VARCHAR(200), 
	result JSON, 
	pid INTEGER, 
	PRIMARY KEY (task_id)
);

CREATE INDEX ix_tasks_model_id ON tasks (model_id);

CREATE INDEX ix_tasks_task_type ON tasks (task_type);

CREATE INDEX ix_tasks_status ON tasks (status);

CREATE INDEX ix_tasks_created_at ON tasks (created_at);

CREATE TABLE models (
	model_id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	version INTEGER NOT NULL, 
	model_type VARCHAR(100), 
	framework VARCHAR(100), 
	status VARCHAR(16) NOT NULL, 
	file_name VARCHAR(500), 
	file_size BIGINT NOT NULL, 
	sha256 VARCHAR(64), 
	kind VARCHAR(8) NOT NULL, 
	handler VARCHAR(32) NOT NULL, 
	files JSON NOT NULL, 
	task_id VARCHAR(64), 
	metrics JSON, 
	description TEXT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (model_id), 
	CONSTRAINT uq_model_name_version UNIQUE (name, version)
);

CREATE INDEX ix_models_task_id ON models (task_id);

CREATE INDEX ix_models_created_at ON models (created_at);

CREATE INDEX ix_models_status ON models (status);

CREATE INDEX ix_models_name ON models (name);
