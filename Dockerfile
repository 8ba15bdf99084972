# audience-sync as a container image: the scheduler daemon by default, or any command.
#   docker build -t audience-sync:0.1.0 .                       (the tag `audience-sync k8s` uses by default)
#   docker build --build-arg EXTRAS=postgres,mysql -t audience-sync:0.1.0 .
# Runs as the non-root user 10001 (the uid the Kubernetes manifests ask for) and writes nothing
# outside its state directory and /tmp, so the root filesystem can be read-only.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# the optional extras to build in: postgres, mysql, duckdb (comma-separated), or none
ARG EXTRAS=postgres
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY etl ./etl
COPY jobs ./jobs
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=postgres
# the version built above (pyproject's); tests/test_image.py keeps the two equal
ARG VERSION=0.1.0
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin audience-sync
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "audience-sync${EXTRAS:+[$EXTRAS]}==${VERSION}" \
    && rm -rf /wheels
# schedules.toml, sql/ (queries and transform modules) are mounted here (a ConfigMap); the state directory is a volume
WORKDIR /etc/audience-sync
ENV AUDIENCE_SYNC_CONFIG=/etc/audience-sync/schedules.toml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["audience-sync"]
CMD ["--log-format", "json", "schedule"]
