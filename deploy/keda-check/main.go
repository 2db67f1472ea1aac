// keda-check validates rendered KEDA ScaledObjects offline against KEDA's own Go API types.
//
// Usage: keda-check [-expect N] MANIFEST.yaml...
//
// Every document of kind ScaledObject in the given multi-document YAML files is decoded strictly into
// KEDA's v1alpha1.ScaledObject (unknown or duplicate fields and wrong types are errors), then put through
// the validation KEDA exports for admission (triggers, replica bounds, fallback, scaling modifiers) and
// the required fields its CRD declares; each trigger's metadata is then parsed by KEDA's own scaler for
// its type, with KEDA's check for unexpected metadata keys switched on. Other kinds are left to the Kubernetes schema check. The exit
// status is 1 when any ScaledObject is invalid or fewer than N were found, 2 on a usage error.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/go-logr/logr"
	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"
)

const scaledObjectAPIVersion = "keda.sh/v1alpha1"

// header is what every Kubernetes document carries; it decides whether a document is ours.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

// decodeStrict fills so from one document's JSON, rejecting fields KEDA's type does not declare.
func decodeStrict(doc []byte, so *kedav1alpha1.ScaledObject) error {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(so); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the object")
	}
	return nil
}

// validate runs KEDA's exported checks and the CRD's required fields on a decoded ScaledObject.
func validate(so *kedav1alpha1.ScaledObject) error {
	if so.APIVersion != scaledObjectAPIVersion {
		return fmt.Errorf("apiVersion %q, KEDA serves ScaledObjects as %q", so.APIVersion, scaledObjectAPIVersion)
	}
	if so.Name == "" {
		return errors.New("metadata.name is required")
	}
	if so.Spec.ScaleTargetRef == nil || so.Spec.ScaleTargetRef.Name == "" {
		return errors.New("spec.scaleTargetRef.name is required")
	}
	if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
		return err
	}
	for i, trigger := range so.Spec.Triggers {
		if trigger.Type == "" {
			return fmt.Errorf("spec.triggers[%d].type is required", i)
		}
		if trigger.Metadata == nil {
			return fmt.Errorf("spec.triggers[%d].metadata is required", i)
		}
	}
	if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(so); err != nil {
		return err
	}
	if err := kedav1alpha1.CheckFallbackValid(so); err != nil {
		return err
	}
	if so.IsUsingModifiers() {
		if _, err := kedav1alpha1.ValidateAndCompileScalingModifiers(so); err != nil {
			return err
		}
	}
	return validateScalers(so)
}

// checkFile validates every ScaledObject in one multi-document YAML file; it returns how many it found
// and one error per invalid document.
func checkFile(path string) (int, []error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, []error{err}
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	found, errs := 0, []error{}
	for index := 0; ; index++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return found, errs
		}
		if err != nil {
			return found, append(errs, fmt.Errorf("%s: document %d: %w", path, index, err))
		}
		doc, err := yaml.YAMLToJSONStrict(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d: %w", path, index, err))
			continue
		}
		var head header
		if string(bytes.TrimSpace(doc)) == "null" || json.Unmarshal(doc, &head) != nil || head.Kind != "ScaledObject" {
			continue // empty documents and other kinds belong to the Kubernetes schema check
		}
		found++
		where := fmt.Sprintf("%s: ScaledObject %q", path, head.Metadata.Name)
		var so kedav1alpha1.ScaledObject
		if err := decodeStrict(doc, &so); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		} else if err := validate(&so); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
	}
}

// kedaVersion is the KEDA module this binary was built against, as recorded by the Go toolchain.
func kedaVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/kedacore/keda/v2" {
				return dep.Version
			}
		}
	}
	return "(unknown)"
}

func main() {
	ensureUnexpectedParamsCheck()
	logf.SetLogger(logr.Discard()) // KEDA's scalers log through controller-runtime; the errors say it all
	expect := flag.Int("expect", 1, "fail unless at least this many ScaledObjects are found")
	version := flag.Bool("version", false, "print the KEDA version this check was built against")
	flag.Parse()
	if *version {
		fmt.Println(kedaVersion())
		return
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: keda-check [-expect N] MANIFEST.yaml...")
		os.Exit(2)
	}
	total, failed := 0, false
	for _, path := range flag.Args() {
		found, errs := checkFile(path)
		total += found
		for _, err := range errs {
			fmt.Fprintln(os.Stderr, "keda-check:", err)
			failed = true
		}
	}
	if total < *expect {
		fmt.Fprintf(os.Stderr, "keda-check: found %d ScaledObjects, expected at least %d\n", total, *expect)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("keda-check: %d ScaledObjects valid against KEDA %s\n", total, kedaVersion())
}
