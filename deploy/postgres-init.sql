-- Run once by the postgres image on an empty data volume (as POSTGRES_USER, in POSTGRES_DB =
-- mlflow): MLflow and Optuna each keep their own alembic_version table, so each gets a database,
-- and so do MLflow's basic-auth users (used only with MLFLOW_AUTH=basic).
CREATE DATABASE optuna;
CREATE DATABASE mlflow_auth;
