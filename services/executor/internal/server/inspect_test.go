package server

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect/inspecttest"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
)

// TestCheckImages: an executor that checks images refuses, before running
// anything, an image holding a shell or any other class of file but node,
// unless it allows the classes found; InspectImage reports the same, and
// refuses an image outside the allowlist.
func TestCheckImages(t *testing.T) {
	ran := 0
	sb := &fakeSandboxes{content: inspecttest.Image(t), run: func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		ran++
		return helloRun(ctx, spec, started)
	}}
	s := newService(t, sb, nil)
	s.cfg.CheckImages = true
	err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()})
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonImageContentForbidden || ran != 0 {
		t.Fatalf("an image with a shell: %v (ran %d), want PermissionDenied %s before anything ran", err, ran, ReasonImageContentForbidden)
	}
	if ei := errorInfo(err); ei.GetMetadata()["classes"] != "shell,interpreter,network-tool,setuid,setgid,capability,world-writable" {
		t.Errorf("classes %q", ei.GetMetadata()["classes"])
	}

	resp, err := s.InspectImage(context.Background(), &executorv1.InspectImageRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetImage() != "sandpit.local/node:24" || resp.GetImageDigest() != "sha256:feed" || resp.GetNodeVersion() != inspecttest.NodeVersion ||
		!slices.Contains(resp.GetForbidden(), "shell") || len(resp.GetFindings()) < 8 {
		t.Errorf("InspectImage: %v", resp)
	}
	if _, err := s.InspectImage(context.Background(), &executorv1.InspectImageRequest{Image: "ghcr.io/acme/tools:1"}); reasonOf(err) != ReasonImageNotAllowed {
		t.Errorf("InspectImage of an image off the allowlist: %v, want %s", err, ReasonImageNotAllowed)
	}

	s.cfg.ImageAllowClasses = imageinspect.Classes
	if err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()}); err != nil || ran != 1 {
		t.Errorf("every class allowed: %v (ran %d)", err, ran)
	}
	s.cfg.CheckImages, s.cfg.ImageAllowClasses = false, nil
	if err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()}); err != nil || ran != 2 {
		t.Errorf("images not checked: %v (ran %d)", err, ran)
	}
}
