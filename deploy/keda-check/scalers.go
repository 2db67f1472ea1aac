package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
)

// unexpectedParamsEnv is KEDA's switch for reporting trigger metadata keys that no scaler field reads.
// KEDA reads it once, when its scalersconfig package initialises, so main re-executes itself with it set.
const unexpectedParamsEnv = "KEDA_CHECK_UNEXPECTED_SCALERS_PARAMS"

// newScaler builds a trigger's scaler the way the KEDA operator does; constructors parse and validate the
// metadata without contacting the scaled system. Only the trigger types the chart uses are listed.
var newScaler = map[string]func(*scalersconfig.ScalerConfig) (scalers.Scaler, error){
	"pulsar": scalers.NewPulsarScaler,
}

// ensureUnexpectedParamsCheck re-executes this program with KEDA's unexpected-parameter check enabled.
func ensureUnexpectedParamsCheck() {
	if os.Getenv(unexpectedParamsEnv) == "enabled" {
		return
	}
	self, err := os.Executable()
	if err == nil {
		err = syscall.Exec(self, os.Args, append(os.Environ(), unexpectedParamsEnv+"=enabled"))
	}
	fmt.Fprintln(os.Stderr, "keda-check: cannot enable KEDA's unexpected-parameter check:", err)
	os.Exit(2)
}

// noteRecorder keeps the warnings KEDA's scaler config raises as Kubernetes events (unmatched keys).
type noteRecorder struct{ notes []string }

func (r *noteRecorder) Eventf(_ runtime.Object, _ runtime.Object, _, _, _, note string, args ...interface{}) {
	r.notes = append(r.notes, fmt.Sprintf(note, args...))
}

var _ events.EventRecorder = (*noteRecorder)(nil)

// validateScalers parses every trigger's metadata with KEDA's own scaler for its type. Credentials live in
// TriggerAuthentications that are not part of a render, so auth parameters are left empty.
func validateScalers(so *kedav1alpha1.ScaledObject) error {
	var errs []error
	for i, trigger := range so.Spec.Triggers {
		build, known := newScaler[trigger.Type]
		if !known {
			kinds := make([]string, 0, len(newScaler))
			for kind := range newScaler {
				kinds = append(kinds, kind)
			}
			sort.Strings(kinds)
			errs = append(errs, fmt.Errorf("spec.triggers[%d]: keda-check validates %v triggers, not %q", i, kinds, trigger.Type))
			continue
		}
		recorder := &noteRecorder{}
		config := &scalersconfig.ScalerConfig{
			ScalableObjectName:      so.Name,
			ScalableObjectNamespace: so.Namespace,
			ScalableObjectType:      "ScaledObject",
			TriggerName:             trigger.Name,
			TriggerType:             trigger.Type,
			TriggerMetadata:         trigger.Metadata,
			ResolvedEnv:             map[string]string{},
			AuthParams:              map[string]string{},
			TriggerIndex:            i,
			MetricType:              trigger.MetricType,
			Recorder:                recorder,
			ScaledObject:            so,
		}
		scaler, err := build(config)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.triggers[%d] (%s): %w", i, trigger.Type, err))
			continue
		}
		_ = scaler.Close(context.Background()) // nothing was opened; Close only releases the HTTP client
		for _, note := range recorder.notes {
			errs = append(errs, fmt.Errorf("spec.triggers[%d] (%s): %s", i, trigger.Type, note))
		}
	}
	return errors.Join(errs...)
}
