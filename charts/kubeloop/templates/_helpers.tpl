{{/*
Chart name, cut to 63 characters (the DNS label limit).
*/}}
{{- define "kubeloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release + chart unless the release already holds the chart name.
*/}}
{{- define "kubeloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's objects: <fullname>-<component>, cut to 63.
*/}}
{{- define "kubeloop.componentName" -}}
{{- printf "%s-%s" (include "kubeloop.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{- define "kubeloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels.
*/}}
{{- define "kubeloop.labels" -}}
helm.sh/chart: {{ include "kubeloop.chart" . }}
{{ include "kubeloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeloop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubeloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component: call with (dict "root" $ "component" "operator").
*/}}
{{- define "kubeloop.componentLabels" -}}
{{ include "kubeloop.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubeloop.componentSelectorLabels" -}}
{{ include "kubeloop.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
ServiceAccount names.
*/}}
{{- define "kubeloop.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "kubeloop.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's leader-election Lease (in the release namespace).
*/}}
{{- define "kubeloop.operator.leaseName" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "kubeloop.drift.serviceAccountName" -}}
{{- if .Values.drift.serviceAccount.create }}
{{- default (include "kubeloop.componentName" (dict "root" . "component" "drift")) .Values.drift.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.drift.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: call with (dict "root" $ "image" .Values.operator.image "global" true).
kubeloop images live under global.imageRegistry; others carry their full repository.
*/}}
{{- define "kubeloop.image" -}}
{{- $repo := .image.repository }}
{{- if .global }}
{{- $repo = printf "%s/%s" .root.Values.global.imageRegistry .image.repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "kubeloop.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The drift service's in-cluster URL: the KServe InferenceService logger sends payload
events here (spec.predictor.logger.url).
*/}}
{{- define "kubeloop.drift.url" -}}
{{- $url := printf "http://%s.%s.svc.cluster.local" (include "kubeloop.componentName" (dict "root" . "component" "drift")) .Release.Namespace }}
{{- if ne (int .Values.drift.servicePort) 80 }}
{{- $url = printf "%s:%d" $url (int .Values.drift.servicePort) }}
{{- end }}
{{- $url }}
{{- end }}

{{/*
Registry (S3) settings: endpoint, TLS, and the Secret holding the credentials.
*/}}
{{- define "kubeloop.minio.secretName" -}}
{{- default (include "kubeloop.componentName" (dict "root" . "component" "minio")) .Values.minio.auth.existingSecret }}
{{- end }}

{{- define "kubeloop.s3.endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s.%s.svc.cluster.local:%d" (include "kubeloop.componentName" (dict "root" . "component" "minio")) .Release.Namespace (int .Values.minio.port) }}
{{- else }}
{{- required "registry.external.endpoint is required when minio.enabled is false" .Values.registry.external.endpoint }}
{{- end }}
{{- end }}

{{- define "kubeloop.registryUri" -}}
{{- printf "s3://%s/%s" .Values.registry.bucket .Values.registry.prefix | trimSuffix "/" }}
{{- end }}

{{/*
Environment shared by every kubeloop container that reads the registry
(kubeloop.settings: KUBELOOP_REGISTRY_URI, KUBELOOP_S3__*, AWS_* from a Secret).
*/}}
{{- define "kubeloop.registryEnv" -}}
- name: KUBELOOP_REGISTRY_URI
  value: {{ include "kubeloop.registryUri" . | quote }}
{{- include "kubeloop.caBundle.env" . }}
- name: KUBELOOP_S3__ENDPOINT
  value: {{ include "kubeloop.s3.endpoint" . | quote }}
- name: KUBELOOP_S3__SECURE
  value: {{ ternary "false" (toString .Values.registry.external.secure) .Values.minio.enabled | quote }}
{{- if and (not .Values.minio.enabled) .Values.registry.external.region }}
- name: KUBELOOP_S3__REGION
  value: {{ .Values.registry.external.region | quote }}
{{- end }}
{{- if .Values.minio.enabled }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "kubeloop.minio.secretName" . }}
      key: {{ .Values.minio.auth.rootUserKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kubeloop.minio.secretName" . }}
      key: {{ .Values.minio.auth.rootPasswordKey }}
{{- else }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ required "registry.external.existingSecret is required when minio.enabled is false" .Values.registry.external.existingSecret }}
      key: {{ .Values.registry.external.accessKeyKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.registry.external.existingSecret }}
      key: {{ .Values.registry.external.secretKeyKey }}
{{- end }}
{{- end }}

{{/*
Names the compiled training pipeline refers to (pipelineUpload.*, defaulted from the
release): the namespace its stage pods run in, the storage ConfigMap there, and the
Secret with the S3 credentials and its keys.
*/}}
{{- define "kubeloop.pipeline.namespace" -}}
{{- default .Values.prerequisites.kfpNamespace .Values.pipelineUpload.runNamespace }}
{{- end }}

{{- define "kubeloop.pipeline.storageConfigMap" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "storage") }}
{{- end }}

{{- define "kubeloop.pipeline.s3Secret" -}}
{{- if .Values.pipelineUpload.s3Secret }}
{{- .Values.pipelineUpload.s3Secret }}
{{- else }}
{{- include "kubeloop.storage.secretName" . }}
{{- end }}
{{- end }}

{{/*
True when the cluster serves the Prometheus Operator API, or detection is off.
*/}}
{{- define "kubeloop.hasPrometheusOperator" -}}
{{- if or (not .Values.prerequisites.detect) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{- end }}
{{- end }}

{{/*
Whether an optional object served by a CRD is rendered: "true" when its `enabled` value is
true (forced on, e.g. for GitOps tools that render offline without --api-versions), nothing
when false, and with "auto" when the cluster serves its API (or prerequisites.detect is
false). Call with (dict "root" $ "enabled" <value> "api" "<group/version>").
*/}}
{{- define "kubeloop.optionalEnabled" -}}
{{- $mode := toString .enabled }}
{{- if eq $mode "true" }}true
{{- else if and (eq $mode "auto") (or (not .root.Values.prerequisites.detect) (.root.Capabilities.APIVersions.Has .api)) }}true
{{- end }}
{{- end }}

{{/*
The S3 endpoint's private CA bundle (registry.caBundle): a Secret or ConfigMap key mounted
read-only at /etc/kubeloop/ca, with SSL_CERT_FILE (kubeloop's S3 client, urllib3, requests'
certifi fallback) and AWS_CA_BUNDLE (boto3, KServe's storage code) pointing at it.
*/}}
{{- define "kubeloop.caBundle.enabled" -}}
{{- if or .Values.registry.caBundle.secretName .Values.registry.caBundle.configMapName }}true{{- end }}
{{- end }}

{{- define "kubeloop.caBundle.path" -}}
/etc/kubeloop/ca/{{ .Values.registry.caBundle.key }}
{{- end }}

{{- define "kubeloop.caBundle.env" -}}
{{- if include "kubeloop.caBundle.enabled" . }}
- name: SSL_CERT_FILE
  value: {{ include "kubeloop.caBundle.path" . | quote }}
- name: AWS_CA_BUNDLE
  value: {{ include "kubeloop.caBundle.path" . | quote }}
{{- end }}
{{- end }}

{{- define "kubeloop.caBundle.volumeMount" -}}
{{- if include "kubeloop.caBundle.enabled" . }}
- name: s3-ca-bundle
  mountPath: /etc/kubeloop/ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "kubeloop.caBundle.volume" -}}
{{- if include "kubeloop.caBundle.enabled" . }}
- name: s3-ca-bundle
  {{- if .Values.registry.caBundle.secretName }}
  secret:
    secretName: {{ .Values.registry.caBundle.secretName }}
  {{- else }}
  configMap:
    name: {{ .Values.registry.caBundle.configMapName }}
  {{- end }}
    items:
      - key: {{ .Values.registry.caBundle.key }}
        path: {{ .Values.registry.caBundle.key }}
{{- end }}
{{- end }}

{{/*
Namespaces the operator serves (operator.watchNamespaces, default the release namespace),
as a JSON list: its Roles and the predictors' storage ServiceAccount go to each. With
operator.watchAllNamespaces the operator reconciles every namespace, and these are still
the namespaces the chart puts the storage ServiceAccount in.
*/}}
{{- define "kubeloop.operator.namespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson (uniq .Values.operator.watchNamespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
The release's node placement of the operator's predictors (servingRuntime.nodeSelector,
tolerations, affinity, runtimeClassName, priorityClassName), as the JSON the operator
reads from KUBELOOP_OPERATOR_PREDICTOR_PLACEMENT; only the keys that are set.
*/}}
{{- define "kubeloop.predictor.placement" -}}
{{- with include "kubeloop.podPlacement" .Values.servingRuntime }}{{ . | fromYaml | toJson }}{{ end }}
{{- end }}

{{/*
Pod spec placement keys (nodeSelector, tolerations, affinity, runtimeClassName,
priorityClassName) that a values block sets, as YAML: call with the block, e.g.
.Values.ray.cluster.head. The one list of placement keys of the chart.
*/}}
{{- define "kubeloop.podPlacement" -}}
{{- $placement := dict }}
{{- range $key := list "nodeSelector" "tolerations" "affinity" "runtimeClassName" "priorityClassName" }}
{{- with get $ $key }}
{{- $_ := set $placement $key . }}
{{- end }}
{{- end }}
{{- if $placement }}{{ toYaml $placement }}{{ end }}
{{- end }}

{{/*
The Secret the predictors' storage ServiceAccount names (the registry's S3 credentials).
*/}}
{{/*
What reads the Feast repository (feature_store.yaml) needs: its registry file on S3 (Feast's
S3 registry takes the endpoint from FEAST_S3_ENDPOINT_URL, the credentials from AWS_*),
then the release's extra Feast variables (online store credentials). Secrets are referred
to by name, in the reading pod's own namespace.
*/}}
{{- define "kubeloop.feast.env" -}}
- name: FEAST_S3_ENDPOINT_URL
  value: {{ printf "%s://%s" (ternary "http" (ternary "https" "http" .Values.registry.external.secure) .Values.minio.enabled) (include "kubeloop.s3.endpoint" .) | quote }}
{{ include "kubeloop.registryEnv" . }}
{{- with .Values.feast.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubeloop.feast.configMapName" -}}
{{- default (include "kubeloop.componentName" (dict "root" . "component" "feast")) .Values.feast.existingConfigMap }}
{{- end }}

{{- define "kubeloop.storage.secretName" -}}
{{- ternary (include "kubeloop.minio.secretName" .) .Values.registry.external.existingSecret .Values.minio.enabled }}
{{- end }}

{{/*
The KubeRay RayCluster (ray.cluster.enabled: true, or auto where ray.io/v1 is served).
Its name leaves room for KubeRay's head Service name, <name>-head-svc, within 63 characters.
*/}}
{{- define "kubeloop.ray.enabled" -}}
{{- include "kubeloop.optionalEnabled" (dict "root" . "enabled" .Values.ray.cluster.enabled "api" "ray.io/v1") }}
{{- end }}

{{- define "kubeloop.ray.name" -}}
{{- printf "%s-ray" (include "kubeloop.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{- define "kubeloop.ray.headService" -}}
{{- printf "%s-head-svc" (include "kubeloop.ray.name" .) }}
{{- end }}

{{/*
The Ray Client address of the RayCluster's head, which the train stage joins
(KUBELOOP_RAY_ADDRESS on the train task); empty without a RayCluster.
*/}}
{{- define "kubeloop.ray.address" -}}
{{- if include "kubeloop.ray.enabled" . }}
{{- printf "ray://%s.%s.svc.cluster.local:%d" (include "kubeloop.ray.headService" .) .Release.Namespace (int .Values.ray.cluster.clientPort) }}
{{- end }}
{{- end }}

{{/*
Environment, mounts and volumes of every Ray pod: the registry's S3 settings and
credentials (Ray Train's checkpoints), HOME and Ray's files under the writable /tmp, and
the object store's /dev/shm in memory.
*/}}
{{- define "kubeloop.ray.env" -}}
- name: HOME
  value: /tmp
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{ include "kubeloop.registryEnv" . }}
{{- end }}

{{- define "kubeloop.ray.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- with include "kubeloop.caBundle.volumeMount" . }}
{{ . }}
{{- end }}
{{- end }}

{{- define "kubeloop.ray.volumes" -}}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.cluster.shmSize }}
{{- with include "kubeloop.caBundle.volume" . }}
{{ . }}
{{- end }}
{{- end }}

{{/*
Fails when a resources block requests nvidia.com/gpu other than it limits: Kubernetes does
not overcommit extended resources, so a GPU request needs an equal limit (a limit alone
is fine: the request defaults to it). Call with (dict "resources" <block> "path" "<values path>").
*/}}
{{- define "kubeloop.checkGpu" -}}
{{- $requests := .resources.requests | default dict }}
{{- $request := get $requests "nvidia.com/gpu" }}
{{- $limit := get (.resources.limits | default dict) "nvidia.com/gpu" }}
{{- if and (hasKey $requests "nvidia.com/gpu") (ne (toString $request) (toString $limit)) }}
{{- fail (printf "%s: nvidia.com/gpu in requests must equal the one in limits (Kubernetes does not overcommit GPUs), got %v and %v" .path $request ($limit | default "none")) }}
{{- end }}
{{- end }}
