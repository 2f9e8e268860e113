{{/* Chart name. */}}
{{- define "osteoserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name. */}}
{{- define "osteoserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels. */}}
{{- define "osteoserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "osteoserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Common labels. */}}
{{- define "osteoserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "osteoserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Service account name. */}}
{{- define "osteoserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "osteoserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The container image: digest wins, else tag, else appVersion (-cuda on GPU). */}}
{{- define "osteoserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- $tag := default (ternary (printf "%s-cuda" .Chart.AppVersion) .Chart.AppVersion .Values.gpu.enabled) .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The backend device. */}}
{{- define "osteoserve.device" -}}
{{- if .Values.gpu.enabled -}}cuda:0{{- else -}}{{ .Values.device }}{{- end -}}
{{- end -}}

{{/* Where the model directories are inside the container. */}}
{{- define "osteoserve.modelsRoot" -}}
{{- if eq .Values.models.source "pvc" -}}/models{{- else -}}/opt/osteoserve/models{{- end -}}
{{- end -}}

{{/* The Secret holding the server certificate. */}}
{{- define "osteoserve.tlsSecret" -}}
{{- default (printf "%s-tls" (include "osteoserve.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/* Whether the tokens file is mounted (auth.mode token or token_or_mtls). */}}
{{- define "osteoserve.tokens" -}}
{{- if has .Values.auth.mode (list "token" "token_or_mtls") }}true{{ end -}}
{{- end -}}
