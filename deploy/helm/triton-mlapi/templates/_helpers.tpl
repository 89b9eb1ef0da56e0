{{/* Names, labels, images and the shared pieces of the pod specs. */}}

{{- define "mlapi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlapi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>, within 63 characters. */}}
{{- define "mlapi.component" -}}
{{- printf "%s-%s" (include "mlapi.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "mlapi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlapi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlapi.labels" -}}
{{ include "mlapi.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: triton-mlapi
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mlapi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlapi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: {root, image, default}: registry/repository@digest or :tag (default tag: appVersion). */}}
{{- define "mlapi.image" -}}
{{- $repo := default .default .image.repository -}}
{{- if .root.Values.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.imageRegistry) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mlapi.tritonImage" -}}
{{- $default := ternary "triton-mlapi/triton" "triton-mlapi/triton-cpu" (eq .Values.triton.flavor "gpu") -}}
{{- include "mlapi.image" (dict "root" . "image" .Values.triton.image "default" $default) -}}
{{- end -}}

{{- define "mlapi.gatewayImage" -}}
{{- include "mlapi.image" (dict "root" . "image" .Values.gateway.image "default" "triton-mlapi/gateway") -}}
{{- end -}}

{{- define "mlapi.tritonKeySecret" -}}
{{- default (include "mlapi.component" (dict "root" . "component" "triton-key")) .Values.triton.accessKey.existingSecret -}}
{{- end -}}

{{/* The Redis URL's source: "secret", "url", "bundled" or "" (none). */}}
{{- define "mlapi.redisSource" -}}
{{- if .Values.redis.urlSecret -}}secret
{{- else if .Values.redis.url -}}url
{{- else if .Values.redis.enabled -}}bundled
{{- end -}}
{{- end -}}

{{/* The restricted securityContext every container of the chart runs with. */}}
{{- define "mlapi.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mlapi.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling keys shared by both Deployments: {root, values, component}. */}}
{{- define "mlapi.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if .values.affinity }}
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "mlapi.selectorLabels" (dict "root" .root "component" .component) | nindent 14 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* tritonserver's install root and backend directory in the image of the chosen flavor. */}}
{{- define "mlapi.tritonRoot" -}}
{{- default (ternary "/opt/tritonserver" "/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver" (eq .Values.triton.flavor "gpu")) .Values.triton.installRoot -}}
{{- end -}}

{{- define "mlapi.tritonBackendDir" -}}
{{- default (ternary "/opt/tritonserver/backends" "/opt/mlapi/backends" (eq .Values.triton.flavor "gpu")) .Values.triton.backendDir -}}
{{- end -}}

{{/* The Triton key the chart's Secret holds: the live Secret's (lookup), else one generated
once per render and shared by every template that asks (so the Secret and the pods' checksum
agree). */}}
{{- define "mlapi.tritonKey" -}}
{{- /* Kept on the render's root context, which every template of the chart shares (never in
.Values, which users supply and upgrades may reuse). */ -}}
{{- if not (hasKey . "mlapiTritonKey") -}}
{{- $name := include "mlapi.component" (dict "root" . "component" "triton-key") -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if and $live $live.data (index $live.data "key") -}}
{{- $_ := set . "mlapiTritonKey" (index $live.data "key" | b64dec) -}}
{{- else -}}
{{- $_ := set . "mlapiTritonKey" (randAlphaNum 43) -}}
{{- end -}}
{{- end -}}
{{- index . "mlapiTritonKey" -}}
{{- end -}}

{{/* Checksum of the Triton key both Deployments read: a new key rolls Triton and the gateway
together. With existingSecret it covers the live Secret's data (lookup) or, where lookup
finds nothing (helm template, GitOps), the Secret's name only. */}}
{{- define "mlapi.tritonKeyChecksum" -}}
{{- if .Values.triton.accessKey.existingSecret -}}
{{- $live := lookup "v1" "Secret" .Release.Namespace .Values.triton.accessKey.existingSecret -}}
{{- printf "%s %s" .Values.triton.accessKey.existingSecret (toJson (default (dict) ($live).data)) | sha256sum -}}
{{- else -}}
{{- include "mlapi.tritonKey" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* The preStop hook of a container: sleep so that endpoints drop the pod before SIGTERM. */}}
{{- define "mlapi.preStop" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ . | quote }}]
{{- end }}
{{- end -}}

{{/* Refusals the schema cannot express (they compare two values); each names the value. */}}
{{- define "mlapi.validate" -}}
{{- $redis := include "mlapi.redisSource" . -}}
{{- $g := .Values.gateway -}}
{{- if and (eq $redis "") (not .Values.autoscaling.gateway.enabled) (gt (int $g.replicas) 1) -}}
{{- fail (printf "/gateway/replicas: %d gateway replicas need Redis (redis.enabled, redis.url or redis.urlSecret): without it every pod keeps its own rate limits and its own SQLite jobs" (int $g.replicas)) -}}
{{- end -}}
{{- if and (eq $redis "") (gt (int $g.workers) 1) -}}
{{- fail (printf "/gateway/workers: %d uvicorn workers need Redis (redis.enabled, redis.url or redis.urlSecret): without it every worker keeps its own rate-limit buckets, so a key gets %d times its plan" (int $g.workers) (int $g.workers)) -}}
{{- end -}}
{{- range $component := list "triton" "gateway" -}}
{{- $a := index $.Values.autoscaling $component -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "/autoscaling/%s/minReplicas: %d is above maxReplicas %d" $component (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- $repo := .Values.triton.modelRepository -}}
{{- $many := or (and .Values.autoscaling.triton.enabled (gt (int .Values.autoscaling.triton.maxReplicas) 1)) (and (not .Values.autoscaling.triton.enabled) (gt (int .Values.triton.replicas) 1)) -}}
{{- if and (eq $repo.source "pvc") $many (not (has $repo.pvc.accessMode (list "ReadOnlyMany" "ReadWriteMany"))) -}}
{{- fail (printf "/triton/modelRepository/pvc/accessMode: %s attaches the claim to one node, but Triton may run more than one pod: use a ReadOnlyMany or ReadWriteMany claim (or one Triton pod)" $repo.pvc.accessMode) -}}
{{- end -}}
{{- if and (eq $repo.source "pvc") $repo.pvc.claimName -}}
{{- $claim := lookup "v1" "PersistentVolumeClaim" .Release.Namespace $repo.pvc.claimName -}}
{{- if and $claim $many (not (or (has "ReadOnlyMany" $claim.spec.accessModes) (has "ReadWriteMany" $claim.spec.accessModes))) -}}
{{- fail (printf "/triton/modelRepository/pvc/accessMode: claim %s is %v, but Triton may run more than one pod: use a ReadOnlyMany or ReadWriteMany claim" $repo.pvc.claimName $claim.spec.accessModes) -}}
{{- end -}}
{{- end -}}
{{- end -}}
