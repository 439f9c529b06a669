-- Run once by the postgres image on an empty data volume (as POSTGRES_USER, in POSTGRES_DB =
-- mlflow): MLflow and Optuna each keep their own alembic_version table, so each gets a database.
CREATE DATABASE optuna;
