{{/* Common labels for every object of the release. */}}
{{- define "esper.labels" -}}
app.kubernetes.io/part-of: esper
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Image reference of one service. */}}
{{- define "esper.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{- if $root.Values.image.registry -}}
{{ printf "%s/esper-%s:%s" $root.Values.image.registry $name $root.Values.image.tag }}
{{- else -}}
{{ printf "esper-%s:%s" $name $root.Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* In-cluster URL of one of the release's services. */}}
{{- define "esper.serviceUrl" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{ printf "http://%s-%s:%v" $root.Release.Name $name (index $root.Values.services $name).port }}
{{- end -}}

{{/* True (non-empty) when KEDA scales this service: autoscaling on and the service has an autoscaling entry. */}}
{{- define "esper.autoscaled" -}}
{{- $root := index . 0 -}}{{- $svc := index . 1 -}}
{{- if and $root.Values.autoscaling.enabled $svc.autoscaling -}}true{{- end -}}
{{- end -}}
