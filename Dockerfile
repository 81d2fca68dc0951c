# The hub's image: Airflow 3.3 (Python 3.11) with cgthub, its connectors, DAGs, plugin, mappings and config.
# Every Airflow service in docker-compose.yml and the hub's own services (MLLP listener, sandboxes) run it.
FROM apache/airflow:3.3.2-python3.11

ENV CGTHUB_HOME=/opt/cgthub
WORKDIR /opt/cgthub

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root cgthub ./cgthub
COPY --chown=airflow:root connectors ./connectors
RUN pip install --no-cache-dir -e . "apache-airflow[celery,postgres]==3.3.2"

COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root config ./config
COPY --chown=airflow:root mappings ./mappings

ENV PYTHONPATH=/opt/cgthub \
    CGTHUB_VAR_DIR=/opt/cgthub/var \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/cgthub/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/cgthub/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
