# One image for every service of docker-compose.yml: the MTA, the simulated internet and
# the Campaign-side client; the command picks the role. It runs as root because the
# simulated ISPs listen on port 25, as real MX hosts do.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mta ./mta
COPY campaign_client ./campaign_client
COPY config ./config
RUN pip install --no-cache-dir . && mkdir -p /data
VOLUME ["/data"]
ENTRYPOINT ["mta"]
CMD ["--help"]
