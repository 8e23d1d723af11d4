package server

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
)

// ReasonImageContentForbidden refuses an image that holds a class of file
// the executor does not run (a shell, another interpreter, ...).
const ReasonImageContentForbidden = "IMAGE_CONTENT_FORBIDDEN"

// maxInspected bounds the reports kept, by image digest.
const maxInspected = 64

// inspected keeps the inspector's reports by image digest: an image's
// content never changes under its digest, so each is read once per
// process (executors in one process, as in the tests, share it).
var inspected struct {
	mu      sync.Mutex
	reports map[string]*imageinspect.Report
}

// inspect returns img's report, reading it from containerd the first time.
func (s *Service) inspect(ctx context.Context, img sandbox.Image) (*imageinspect.Report, error) {
	inspected.mu.Lock()
	r, ok := inspected.reports[img.Digest]
	inspected.mu.Unlock()
	if ok {
		return r, nil
	}
	content, err := s.sb.Content(ctx, img)
	if err != nil {
		return nil, err
	}
	if r, err = imageinspect.Inspect(content); err != nil {
		return nil, fmt.Errorf("inspect image %s: %w", img.Ref, err)
	}
	inspected.mu.Lock()
	defer inspected.mu.Unlock()
	if inspected.reports == nil || len(inspected.reports) >= maxInspected {
		inspected.reports = map[string]*imageinspect.Report{}
	}
	inspected.reports[img.Digest] = r
	return r, nil
}

// CheckImage refuses img when it holds a class of file the executor does
// not run (Config.ImageAllowClasses aside); with Config.CheckImages off it
// lets every image through.
func (s *Service) CheckImage(ctx context.Context, img sandbox.Image) error {
	if !s.cfg.CheckImages {
		return nil
	}
	r, err := s.inspect(ctx, img)
	if err != nil {
		return s.runtimeError(ctx, "", err)
	}
	forbidden := r.Forbidden(s.cfg.ImageAllowClasses)
	if len(forbidden) == 0 {
		return nil
	}
	var what []string
	for _, c := range forbidden {
		var paths []string
		for _, f := range r.Findings {
			if f.Class == c && len(paths) < 3 {
				paths = append(paths, f.Path)
			}
		}
		what = append(what, fmt.Sprintf("%s (%s)", c, strings.Join(paths, ", ")))
	}
	classes := make([]string, len(forbidden))
	for i, c := range forbidden {
		classes[i] = string(c)
	}
	return statusError(codes.PermissionDenied, ReasonImageContentForbidden,
		fmt.Sprintf("image %s holds what this executor does not run: %s", img.Ref, strings.Join(what, "; ")),
		map[string]string{"image": img.Ref, "classes": strings.Join(classes, ",")})
}

// InspectImage reports what an image the caller may run holds.
func (s *Service) InspectImage(ctx context.Context, req *executorv1.InspectImageRequest) (*executorv1.InspectImageResponse, error) {
	ref := s.imageRef(req.GetImage())
	if !s.imageAllowed(ref) {
		return nil, s.reject(imageNotAllowed(ref))
	}
	img, err := s.resolveImage(ctx, ref)
	if err != nil {
		return nil, s.reject(err)
	}
	r, err := s.inspect(ctx, img)
	if err != nil {
		return nil, s.runtimeError(ctx, "", err)
	}
	resp := &executorv1.InspectImageResponse{Image: img.Ref, ImageDigest: img.Digest, NodeVersion: r.Node.Version, StickyWorldWritable: r.Sticky}
	for _, f := range r.Findings {
		resp.Findings = append(resp.Findings, &executorv1.ImageFinding{Class: string(f.Class), Path: f.Path, Why: f.Why})
	}
	for _, c := range r.Forbidden(s.cfg.ImageAllowClasses) {
		resp.Forbidden = append(resp.Forbidden, string(c))
	}
	return resp, nil
}
