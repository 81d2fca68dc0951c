-- Two databases on the one PostgreSQL server: Airflow's metadata and the hub's own.
CREATE USER cgthub WITH PASSWORD 'cgthub';
CREATE DATABASE cgthub OWNER cgthub;
