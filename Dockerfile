# The hub's image: Airflow 3.3 (Python 3.11) with cgthub, its connectors, DAGs, plugin, mappings and config.
# Every Airflow service in docker-compose.yml and the hub's own services (MLLP listener, webhook
# delivery, courier receiver, sandboxes) run it. .dockerignore keeps .venv, var and .git out of the
# build context.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
ARG PYTHON_VERSION

ENV CGTHUB_HOME=/opt/cgthub
WORKDIR /opt/cgthub

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root cgthub ./cgthub
COPY --chown=airflow:root connectors ./connectors
# Airflow's constraints file pins every transitive dependency to the set Airflow was released and
# tested with, so a rebuild next month installs the same versions (Airflow's installation docs).
RUN pip install --no-cache-dir \
        --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" \
        "apache-airflow[celery,postgres,statsd]==${AIRFLOW_VERSION}" \
        apache-airflow-providers-fab \
        -e .

COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root config ./config
COPY --chown=airflow:root mappings ./mappings

ENV PYTHONPATH=/opt/cgthub \
    CGTHUB_VAR_DIR=/opt/cgthub/var \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/cgthub/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/cgthub/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
