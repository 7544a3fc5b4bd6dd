# syntax=docker/dockerfile:1
# Multi-stage build of the one artifactstore binary: a static Go binary on a
# distroless base, run as a non-root user.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/artifactstore ./cmd/artifactstore && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/artifactstore /usr/local/bin/artifactstore
# An empty /data owned by the runtime user, so that a fresh named volume
# mounted there is writable.
COPY --from=build --chown=65532:65532 /out/data /data
# 65532 is distroless's "nonroot" user; /data holds the object bytes.
USER 65532:65532
VOLUME ["/data"]
ENV ARTIFACTSTORE_DATA_DIR=/data \
    ARTIFACTSTORE_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/artifactstore"]
CMD ["--help"]
