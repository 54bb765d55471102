package main

import (
	"fmt"
	"html"
	"strings"
	"time"

	"github.com/dthrottle/throttle/internal/simevent"
)

// SVG geometry, in pixels.
const (
	svgWidth  = 960
	svgLeft   = 110 // room for lane labels
	svgRight  = 20
	svgTop    = 58 // room for the title
	svgLaneH  = 30
	svgAxisH  = 34
	svgLegend = 30
)

// svg draws the timeline as an SVG picture: an "all starts" lane, then one
// lane per worker with its API calls as bars, starts as ticks, waits as
// dashes, throttled calls as small crosses and store errors as dots, over
// stripes that mark every interval, with a time axis and a legend.
func (r *simResult) svg() string {
	ls, from, to := r.lanes()
	c := r.cfg
	span := float64(max(to-from, 1))
	plotW := float64(svgWidth - svgLeft - svgRight)
	x := func(t int64) float64 { return svgLeft + float64(t-from)/span*plotW }
	nLanes := len(ls) + 1
	plotH := nLanes * svgLaneH
	height := svgTop + plotH + svgAxisH + svgLegend + 10

	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...); b.WriteByte('\n') }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
		svgWidth, height, svgWidth, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>`)

	rep := simevent.Check(simevent.Admissions(r.events()), c.interval, c.limit, r.span)
	verdict, color := "PASS", "#1a7f37"
	if !rep.OK() {
		verdict, color = "FAIL", "#cf222e"
	}
	mode := "drop"
	if c.wait > 0 {
		mode = "wait " + c.wait.String()
	}
	p(`<text x="%d" y="22" font-size="15" font-weight="bold">dthrottle sim: %d worker processes, at most %d start(s) per %v (%s)</text>`,
		svgLeft, c.workers, c.limit, c.interval, html.EscapeString(mode))
	p(`<text x="%d" y="42" fill="#444">%d starts, min raw gap %s, max %d in any window, <tspan fill="%s" font-weight="bold">%d provable violations: %s</tspan></text>`,
		svgLeft, rep.Starts, minGapText(rep), rep.MaxInWindow, color, rep.Violations, verdict)

	// Stripes: every other interval from the beginning, when they are wide
	// enough to see.
	if iv := int64(c.interval); float64(iv)/span*plotW >= 3 {
		for t, i := from, 0; t < to; t, i = t+iv, i+1 {
			if i%2 == 1 {
				x0, x1 := x(t), x(min(t+iv, to))
				p(`<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#f3f5f8"/>`, x0, svgTop, x1-x0, plotH)
			}
		}
	}

	// Lanes.
	for i := range nLanes {
		y := svgTop + i*svgLaneH
		name, sub := "all starts", ""
		if i > 0 {
			name, sub = fmt.Sprintf("w%d", ls[i-1].id), fmt.Sprintf("pid %d", ls[i-1].pid)
		}
		p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/>`, svgLeft, y+svgLaneH, svgWidth-svgRight, y+svgLaneH)
		p(`<text x="10" y="%d" font-weight="bold">%s</text>`, y+19, name)
		if sub != "" {
			p(`<text x="%d" y="%d" text-anchor="end" fill="#888" font-size="10">%s</text>`, svgLeft-8, y+19, sub)
		}
	}
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/>`, svgLeft, svgTop, svgWidth-svgRight, svgTop)
	for i, l := range ls {
		y := float64(svgTop + (i+1)*svgLaneH)
		mid := y + svgLaneH/2
		for _, w := range l.waits {
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="3,2"/>`, x(w[0]), mid, x(w[1]), mid)
		}
		for _, bar := range l.bars {
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="12" rx="2" fill="#6aa6e8"/>`, x(bar[0]), mid-6, max(x(bar[1])-x(bar[0]), 1))
		}
		for _, t := range l.starts {
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#0b3d91" stroke-width="2"/>`, x(t), y+3, x(t), y+svgLaneH-3)
		}
		for _, t := range l.throttled {
			p(`<path d="M%.1f %.1fl6 6m0 -6l-6 6" stroke="#d1242f" stroke-width="1.5"/>`, x(t)-3, mid-3)
		}
		for _, t := range l.errors {
			p(`<circle cx="%.1f" cy="%.1f" r="3.5" fill="#e36209"/>`, x(t), mid)
		}
		// The "all starts" lane.
		for _, t := range l.starts {
			p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#0b3d91" stroke-width="2"/>`, x(t), svgTop+4, x(t), svgTop+svgLaneH-4)
		}
	}

	// The time axis.
	axisY := svgTop + plotH
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`, svgLeft, axisY, svgWidth-svgRight, axisY)
	step := niceStep(time.Duration(span), 12)
	for t := time.Duration(0); float64(t) <= span; t += step {
		tx := x(from + int64(t))
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/>`, tx, axisY, tx, axisY+5)
		p(`<text x="%.1f" y="%d" text-anchor="middle" fill="#333">%s</text>`, tx, axisY+18, secLabel(t))
	}
	p(`<text x="10" y="%d" fill="#333">time</text>`, axisY+18)

	// The legend.
	ly := axisY + svgAxisH + 6
	lx := svgLeft
	item := func(kind, text string) {
		switch kind {
		case "start":
			p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#0b3d91" stroke-width="2"/>`, lx+7, ly-8, lx+7, ly+8)
		case "bar":
			p(`<rect x="%d" y="%d" width="14" height="12" rx="2" fill="#6aa6e8"/>`, lx, ly-6)
		case "throttled":
			p(`<path d="M%d %dl6 6m0 -6l-6 6" stroke="#d1242f" stroke-width="1.5"/>`, lx+4, ly-3)
		case "wait":
			p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#999" stroke-dasharray="3,2"/>`, lx, ly, lx+14, ly)
		case "error":
			p(`<circle cx="%d" cy="%d" r="3.5" fill="#e36209"/>`, lx+7, ly)
		case "stripe":
			p(`<rect x="%d" y="%d" width="14" height="12" fill="#f3f5f8" stroke="#ccc"/>`, lx, ly-6)
		}
		p(`<text x="%d" y="%d" fill="#333">%s</text>`, lx+20, ly+4, html.EscapeString(text))
		lx += 20 + 7*len(text) + 22
	}
	item("start", "start (fn began)")
	item("bar", "API call")
	item("throttled", "throttled")
	if c.wait > 0 {
		item("wait", "waiting for a turn")
	}
	item("error", "store error")
	if float64(c.interval)/span*plotW >= 3 {
		item("stripe", "every other interval ("+c.interval.String()+")")
	}
	p(`</svg>`)
	return b.String()
}

func minGapText(rep simevent.Report) string {
	if rep.Starts < 2 {
		return "-"
	}
	return fmtDur(rep.MinGap)
}
