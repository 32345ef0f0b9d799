# Deployment: container images, Compose, Kubernetes manifests and their offline checks.
# Included by the Makefile (`include deploy/deploy.mk`); also works alone: make -f deploy/deploy.mk TARGET.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

DOCKER ?= docker
IMAGE_PREFIX ?=
IMAGE_TAG ?= dev
DOCKER_IMAGES := task-service dispatcher provider-volcengine provider-openai openai-door upstream-simulator envoy
# Where docker-run-server / docker-run-worker find MongoDB and Redis (default: on the host).
DOCKER_MONGO_URL ?= mongodb://host.docker.internal:27017/
DOCKER_REDIS_URL ?= redis://host.docker.internal:6379/0
DOCKER_RUN_FLAGS := --rm --add-host host.docker.internal:host-gateway --read-only --tmpfs /tmp \
	--cap-drop ALL --security-opt no-new-privileges -e MONGO_URL=$(DOCKER_MONGO_URL) -e REDIS_URL=$(DOCKER_REDIS_URL)
COMPOSE := $(DOCKER) compose -f deploy/compose/compose.yaml $(if $(VENDORS),-f deploy/compose/compose.vendors.yaml)
KUSTOMIZE_VERSION := v5.8.1
KUSTOMIZE := .local/bin/kustomize
# BuildKit's metadata of each build (its image digest), for deploy-pin-images.
IMAGE_METADATA := .local/images
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: tools-kustomize tools-promtool deploy-pin-images deploy-check deploy-envoy-config docker-build-all $(addprefix docker-build-,$(DOCKER_IMAGES)) \
	docker-run-server docker-run-worker docker-compose-up docker-compose-down images-offline

tools-kustomize: ## Install the pinned kustomize into .local/bin (from the Go module proxy) unless it is there
	@if [[ "$$($(KUSTOMIZE) version 2>/dev/null)" != "$(KUSTOMIZE_VERSION)" ]]; then \
		echo "installing kustomize $(KUSTOMIZE_VERSION) into .local/bin"; \
		GOBIN="$(abspath .local/bin)" go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); \
	fi

tools-promtool: ## Install promtool (Debian's prometheus package) unless it is there: deploy-check runs it on the alert rules
	@command -v promtool >/dev/null || { echo "installing promtool (apt-get install prometheus)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

deploy-check: tools-kustomize tools-promtool ## Validate the kustomize overlays, Compose files and Envoy configs, offline
	deploy/check.sh

deploy-pin-images: ## After docker-build-all and docker push: pin the prod overlay's images to the built digests
	.venv/bin/python -m deploy.pin_images $(IMAGE_METADATA)

deploy-envoy-config: ## Re-render the Kubernetes Envoy ConfigMap file from gateway/config.py (the image's arguments)
	.venv/bin/python -m deploy.check render-envoy deploy/k8s/base/envoy/envoy.json

docker-build-all: $(addprefix docker-build-,$(DOCKER_IMAGES)) ## Build every image (one: docker-build-<name>, names in DOCKER_IMAGES)

$(addprefix docker-build-,$(DOCKER_IMAGES)): docker-build-%:
	@mkdir -p $(IMAGE_METADATA)
	$(DOCKER) build --target $* --tag $(IMAGE_PREFIX)aitask-$*:$(IMAGE_TAG) \
		--build-arg IMAGE_VERSION=$(IMAGE_TAG) --build-arg IMAGE_REVISION=$(IMAGE_REVISION) \
		--metadata-file $(IMAGE_METADATA)/$*.json .

images-offline: ## Build every image with podman on bases from Debian's packages (no registry); check sizes, start task-service's, validate Envoy's (root)
	deploy/images/offline.sh $(DOCKER_IMAGES)

docker-run-server: ## Run the task-service image on 127.0.0.1:50051 (DOCKER_MONGO_URL, DOCKER_REDIS_URL)
	$(DOCKER) run $(DOCKER_RUN_FLAGS) --name aitask-task-service -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 \
		$(IMAGE_PREFIX)aitask-task-service:$(IMAGE_TAG)

docker-run-worker: ## Run the dispatcher (RQ workers) image (DOCKER_MONGO_URL, DOCKER_REDIS_URL)
	$(DOCKER) run $(DOCKER_RUN_FLAGS) --name aitask-dispatcher --stop-timeout 210 -p 127.0.0.1:9465:9465 \
		$(IMAGE_PREFIX)aitask-dispatcher:$(IMAGE_TAG)

docker-compose-up: ## Build and start the stack in containers (MONITORING=1: Prometheus, Grafana, Jaeger; VENDORS=1: real APIs)
	$(if $(MONITORING),OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4317) $(COMPOSE) $(if $(MONITORING),--profile monitoring) up --build --detach --wait

docker-compose-down: ## Stop the containers of docker-compose-up (volumes kept; add -v by hand to drop them)
	$(COMPOSE) --profile monitoring down
