// Package fakefeishu is a local stand-in for the Feishu/Lark custom group bot
// webhook, so that end-to-end tests can check the alert cards the project
// sends without reaching the internet. It checks what the real service checks
// (token, body size, rate, signature, message and card schema, keyword), in
// the same order, and answers with the real error codes.
package fakefeishu

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Feishu's answers. Every answer on a hook path is HTTP 200 with
// {"code":N,"msg":"...","data":{}}; the codes let tests assert on the outcome.
const (
	// CodeOK is the code of an accepted message.
	CodeOK = 0
	// CodeBadRequest answers bad JSON, a bad method or content type, and a bad message or card.
	CodeBadRequest = 9499
	// CodeInvalidToken answers a token the fake does not know.
	CodeInvalidToken = 19001
	// CodeSignature answers a wrong or missing signature, or a timestamp more than an hour off.
	CodeSignature = 19021
	// CodeKeyword answers a message without the bot's keyword.
	CodeKeyword = 19024
	// CodeRateLimited answers a request beyond 5 per second or 100 per minute for a bot.
	CodeRateLimited = 11232
	// CodeTooLarge answers a body larger than MaxBody.
	CodeTooLarge = 19036
)

const (
	// HookPrefix is the path under which Feishu serves custom bot webhooks; the token follows it.
	HookPrefix = "/open-apis/bot/v2/hook/"
	// MaxBody is the largest body Feishu accepts, in bytes.
	MaxBody = 20 * 1024

	perSecond = 5
	perMinute = 100
	maxRead   = 1 << 20 // what the fake reads and records of a body
)

var msgs = map[int]string{
	CodeOK:           "success",
	CodeBadRequest:   "Bad Request",
	CodeInvalidToken: "param invalid: incoming webhook access token invalid",
	CodeSignature:    "sign match fail or timestamp is not within one hour from current time",
	CodeKeyword:      "Key Words Not Found",
	CodeRateLimited:  "frequency limited",
	CodeTooLarge:     "request body too large, max 20KB",
}

// Bot is one custom bot the fake knows: its token (the last path element of
// the webhook URL), and the optional secret (signature check) and keyword
// (content check) configured in the group's bot settings.
type Bot struct{ Token, Secret, Keyword string }

// Request is one request the fake received and how it answered, so tests can
// assert on both what the client sent and what it was told.
type Request struct {
	Time    time.Time
	Token   string
	Code    int    // the code answered; 404 (answered as HTTP 404) for a path outside HookPrefix
	Msg     string // the msg answered
	Body    []byte
	Message Message // parsed body (zero when it did not parse)
}

// Message is a parsed webhook body. Card is set only when the card passed
// validation. It also marshals to a valid body, so tests can build requests.
type Message struct {
	MsgType   string          `json:"msg_type"`
	Card      *Card           `json:"card,omitempty"`
	Content   json.RawMessage `json:"content,omitempty"`
	Timestamp string          `json:"timestamp,omitempty"`
	Sign      string          `json:"sign,omitempty"`
}

// Card is a validated interactive card (v1 schema), for tests to assert on.
type Card struct {
	Config   map[string]any `json:"config,omitempty"`
	Header   Header         `json:"header"`
	Elements []Element      `json:"elements"`
}

// Header is a card's title bar.
type Header struct {
	Title    Text   `json:"title"`
	Template string `json:"template,omitempty"` // colour, e.g. "red"
}

// Text is a text object: Tag is "plain_text" or "lark_md".
type Text struct {
	Tag     string `json:"tag"`
	Content string `json:"content"`
}

// Field is one of a div's fields.
type Field struct {
	IsShort bool `json:"is_short"`
	Text    Text `json:"text"`
}

// Button is a URL button of an action element (the only kind custom bots may send).
type Button struct {
	Text Text   `json:"text"`
	URL  string `json:"url"`
	Type string `json:"type,omitempty"` // "default", "primary" or "danger"
}

// MarshalJSON adds the "button" tag, so a Card built by a test marshals to a valid card.
func (b Button) MarshalJSON() ([]byte, error) {
	type plain Button
	return json.Marshal(struct {
		Tag string `json:"tag"`
		plain
	}{"button", plain(b)})
}

// Element is one card element; which fields are set depends on Tag:
// div (Text and/or Fields), action (Actions), note (Elements), hr, markdown (Content).
type Element struct {
	Tag      string   `json:"tag"`
	Text     *Text    `json:"text,omitempty"`
	Fields   []Field  `json:"fields,omitempty"`
	Actions  []Button `json:"actions,omitempty"`
	Elements []Text   `json:"elements,omitempty"`
	Content  string   `json:"content,omitempty"`
}

// Text returns all text of the card, newline-separated: the title, div texts
// and fields, buttons' texts and urls, notes and markdown. It is what the
// keyword check searches, and lets tests assert with strings.Contains.
func (c *Card) Text() string {
	parts := []string{c.Header.Title.Content}
	for _, e := range c.Elements {
		if e.Text != nil {
			parts = append(parts, e.Text.Content)
		}
		for _, f := range e.Fields {
			parts = append(parts, f.Text.Content)
		}
		for _, b := range e.Actions {
			parts = append(parts, b.Text.Content, b.URL)
		}
		for _, n := range e.Elements {
			parts = append(parts, n.Content)
		}
		if e.Content != "" {
			parts = append(parts, e.Content)
		}
	}
	return strings.Join(parts, "\n")
}

// Buttons returns every button of the card, in order, so tests can check links.
func (c *Card) Buttons() []Button {
	var bs []Button
	for _, e := range c.Elements {
		bs = append(bs, e.Actions...)
	}
	return bs
}

// Sign computes Feishu's signature of a timestamp (Unix seconds as a decimal
// string): base64(HMAC-SHA256 keyed by timestamp+"\n"+secret, over no data).
// It is the reference for tests of the client's signing.
func Sign(timestamp, secret string) string {
	mac := hmac.New(sha256.New, []byte(timestamp+"\n"+secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Server is the fake webhook service. It is safe for concurrent use.
type Server struct {
	mu   sync.Mutex
	addr string
	bots map[string]Bot
	now  func() time.Time
	srv  *http.Server // nil while down or closed
	done bool         // closed for good
	reqs []Request
	hits map[string][]time.Time // per token, requests within the last minute
}

// Start starts a fake serving the given bots on 127.0.0.1 at a free port.
func Start(bots ...Bot) (*Server, error) {
	s := &Server{bots: map[string]Bot{}, now: time.Now, hits: map[string][]time.Time{}}
	for _, b := range bots {
		if b.Token == "" || strings.Contains(b.Token, "/") {
			return nil, fmt.Errorf("fakefeishu: bad token %q", b.Token)
		}
		if _, dup := s.bots[b.Token]; dup {
			return nil, fmt.Errorf("fakefeishu: duplicate token %q", b.Token)
		}
		s.bots[b.Token] = b
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

func (s *Server) serve(ln net.Listener) {
	s.srv = &http.Server{Handler: http.HandlerFunc(s.handle)}
	go s.srv.Serve(ln)
}

// setNow replaces the clock (tests of the fake use it to cross rate windows).
func (s *Server) setNow(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// URL returns the full webhook URL of a bot, what the client is configured with.
func (s *Server) URL(token string) string {
	return "http://" + s.addr + HookPrefix + token
}

// Down closes the listener and all connections, so that clients get
// "connection refused", as from a dead service. It fails when not up.
func (s *Server) Down() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return errors.New("fakefeishu: not up")
	}
	err := s.srv.Close()
	s.srv = nil
	return err
}

// Up listens again on the same address after Down, as a service coming back.
// It fails when already up or closed.
func (s *Server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.srv != nil {
		return errors.New("fakefeishu: closed or already up")
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

// Close stops the fake for good.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
	s.done = true
}

// Requests returns every request received, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// Accepted returns the requests answered with code 0: the messages a group would show.
func (s *Server) Accepted() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ok []Request
	for _, r := range s.reqs {
		if r.Code == CodeOK {
			ok = append(ok, r)
		}
	}
	return ok
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxRead))
	s.mu.Lock()
	now := s.now()
	token, hook := strings.CutPrefix(r.URL.Path, HookPrefix)
	req := Request{Time: now, Token: token, Body: body}
	if hook {
		req.Code, req.Msg, req.Message = s.check(r, token, body, now)
	} else {
		req.Code, req.Msg = http.StatusNotFound, "404 page not found"
	}
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()

	if !hook {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(map[string]any{"code": req.Code, "msg": req.Msg, "data": map[string]any{}})
}

// check answers one hook request, in Feishu's order of checks. s.mu is held.
func (s *Server) check(r *http.Request, token string, body []byte, now time.Time) (int, string, Message) {
	var m Message
	answer := func(code int) (int, string, Message) { return code, msgs[code], m }
	bad := func(err error) (int, string, Message) {
		return CodeBadRequest, msgs[CodeBadRequest] + ": " + err.Error(), m
	}
	bot, ok := s.bots[token]
	if !ok {
		return answer(CodeInvalidToken)
	}
	limited := s.limited(token, now) // every request past the token counts
	if len(body) > MaxBody {
		return answer(CodeTooLarge)
	}
	if limited {
		return answer(CodeRateLimited)
	}
	if r.Method != http.MethodPost {
		return bad(fmt.Errorf("method %s, want POST", r.Method))
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return bad(fmt.Errorf("content type %q, want application/json", r.Header.Get("Content-Type")))
	}
	var wire struct {
		MsgType   string          `json:"msg_type"`
		Content   json.RawMessage `json:"content"`
		Card      json.RawMessage `json:"card"`
		Timestamp string          `json:"timestamp"`
		Sign      string          `json:"sign"`
	}
	if err := json.Unmarshal(body, &wire); err != nil {
		return bad(fmt.Errorf("invalid JSON: %v", err))
	}
	m = Message{MsgType: wire.MsgType, Content: wire.Content, Timestamp: wire.Timestamp, Sign: wire.Sign}
	if bot.Secret != "" && !signed(wire.Timestamp, wire.Sign, bot.Secret, now) {
		return answer(CodeSignature)
	}
	var sc schema
	var text string
	switch wire.MsgType {
	case "text":
		text = sc.textContent(decode(wire.Content))
	case "post":
		text = sc.post(decode(wire.Content))
	case "interactive":
		card := decode(wire.Card)
		if card == nil {
			sc.failf("card: required at the top level (not inside content) for msg_type interactive")
		}
		if c := sc.card(card); sc.err == nil {
			m.Card, text = c, c.Text()
		}
	default:
		sc.failf("msg_type: unknown %q", wire.MsgType)
	}
	if sc.err != nil {
		return bad(sc.err)
	}
	if bot.Keyword != "" && !strings.Contains(text, bot.Keyword) {
		return answer(CodeKeyword)
	}
	return answer(CodeOK)
}

// limited counts the request and tells whether it is beyond the bot's limits.
func (s *Server) limited(token string, now time.Time) bool {
	hits := slices.DeleteFunc(s.hits[token], func(t time.Time) bool { return !t.After(now.Add(-time.Minute)) })
	inSecond := 0
	for _, t := range hits {
		if t.After(now.Add(-time.Second)) {
			inSecond++
		}
	}
	s.hits[token] = append(hits, now)
	return inSecond >= perSecond || len(hits) >= perMinute
}

func signed(timestamp, sign, secret string, now time.Time) bool {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || sign == "" {
		return false
	}
	if d := now.Sub(time.Unix(sec, 0)); d > time.Hour || d < -time.Hour {
		return false
	}
	return hmac.Equal([]byte(sign), []byte(Sign(timestamp, secret)))
}

// decode turns already-valid JSON into generic values; absent or null gives nil.
func decode(raw json.RawMessage) any {
	var v any
	json.Unmarshal(raw, &v)
	return v
}

var (
	textTags    = []string{"lark_md", "plain_text"}
	buttonTypes = []string{"default", "primary", "danger"}
	templates   = []string{"blue", "wathet", "turquoise", "green", "yellow", "orange", "red",
		"carmine", "violet", "purple", "indigo", "grey", "default"}
	cardElements = map[string][]string{
		"div":      {"tag", "text", "fields"},
		"action":   {"tag", "actions"},
		"note":     {"tag", "elements"},
		"hr":       {"tag"},
		"markdown": {"tag", "content"},
	}
	postSegments = map[string][]string{
		"text": {"tag", "text", "un_escape"},
		"a":    {"tag", "text", "href"},
		"at":   {"tag", "user_id", "user_name"},
	}
	postNeeds = map[string]string{"text": "text", "a": "href", "at": "user_id"}
)

// schema validates decoded JSON against Feishu's message schemas. Its first
// error sticks and names the path; later checks then change nothing, which
// keeps the walkers free of error plumbing.
type schema struct{ err error }

func (s *schema) failf(format string, a ...any) {
	if s.err == nil {
		s.err = fmt.Errorf(format, a...)
	}
}

// textContent checks a text message's content and returns its text.
func (s *schema) textContent(v any) string {
	return s.str(s.object(v, "content", "text"), "text", "content", nonEmpty)
}

// post checks a post message's content and returns its titles and texts.
func (s *schema) post(v any) string {
	langs := s.object(s.object(v, "content", "post")["post"], "content.post", "zh_cn", "en_us")
	if len(langs) == 0 {
		s.failf("content.post: needs zh_cn or en_us")
	}
	var parts []string
	for _, lang := range []string{"zh_cn", "en_us"} {
		lv, ok := langs[lang]
		if !ok {
			continue
		}
		p := "content.post." + lang
		lm := s.object(lv, p, "title", "content")
		parts = append(parts, s.str(lm, "title", p, optional))
		for i, row := range s.array(lm["content"], p+".content", false) {
			for j, seg := range s.array(row, fmt.Sprintf("%s.content[%d]", p, i), false) {
				sp := fmt.Sprintf("%s.content[%d][%d]", p, i, j)
				m, tag := s.tagged(seg, sp, postSegments)
				if need, ok := postNeeds[tag]; ok {
					s.str(m, need, sp, present)
				}
				if t, ok := m["text"].(string); ok {
					parts = append(parts, t)
				}
			}
		}
	}
	return strings.Join(parts, "\n")
}

// card checks an interactive card (v1 schema) and returns it parsed.
func (s *schema) card(v any) *Card {
	m := s.object(v, "card", "header", "config", "elements")
	h := s.object(m["header"], "card.header", "title", "template")
	c := &Card{Header: Header{Title: s.text(h["title"], "card.header.title", []string{"plain_text"}, nonEmpty)}}
	if _, ok := h["template"]; ok {
		c.Header.Template = s.str(h, "template", "card.header", present)
		s.oneOf(c.Header.Template, "card.header.template", templates)
	}
	if cv, ok := m["config"]; ok {
		c.Config = s.object(cv, "card.config", "wide_screen_mode", "enable_forward")
		s.boolean(c.Config, "wide_screen_mode", "card.config")
		s.boolean(c.Config, "enable_forward", "card.config")
	}
	for i, ev := range s.array(m["elements"], "card.elements", true) {
		c.Elements = append(c.Elements, s.element(ev, fmt.Sprintf("card.elements[%d]", i)))
	}
	return c
}

func (s *schema) element(v any, p string) Element {
	m, tag := s.tagged(v, p, cardElements)
	e := Element{Tag: tag}
	switch tag {
	case "div":
		if tv, ok := m["text"]; ok {
			t := s.text(tv, p+".text", textTags, present)
			e.Text = &t
		}
		if fv, ok := m["fields"]; ok {
			for i, f := range s.array(fv, p+".fields", true) {
				fp := fmt.Sprintf("%s.fields[%d]", p, i)
				fm := s.object(f, fp, "is_short", "text")
				e.Fields = append(e.Fields, Field{s.boolean(fm, "is_short", fp), s.text(fm["text"], fp+".text", textTags, present)})
			}
		}
		if e.Text == nil && e.Fields == nil {
			s.failf("%s: div needs text or fields", p)
		}
	case "action":
		for i, a := range s.array(m["actions"], p+".actions", true) {
			e.Actions = append(e.Actions, s.button(a, fmt.Sprintf("%s.actions[%d]", p, i)))
		}
	case "note":
		for i, n := range s.array(m["elements"], p+".elements", true) {
			e.Elements = append(e.Elements, s.text(n, fmt.Sprintf("%s.elements[%d]", p, i), textTags, present))
		}
	case "markdown":
		e.Content = s.str(m, "content", p, present)
	}
	return e
}

func (s *schema) button(v any, p string) Button {
	m, _ := s.tagged(v, p, map[string][]string{"button": {"tag", "text", "url", "type"}})
	b := Button{Text: s.text(m["text"], p+".text", textTags, nonEmpty)}
	if _, ok := m["url"]; !ok {
		s.failf("%s.url: required, custom bots support only URL buttons", p)
	}
	b.URL = s.str(m, "url", p, nonEmpty)
	if u, err := url.Parse(b.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		s.failf("%s.url: not an absolute http(s) URL: %q", p, b.URL)
	}
	if _, ok := m["type"]; ok {
		b.Type = s.str(m, "type", p, present)
		s.oneOf(b.Type, p+".type", buttonTypes)
	}
	return b
}

// text checks a text object {tag, content} whose tag is one of tags.
func (s *schema) text(v any, p string, tags []string, need int) Text {
	keys := map[string][]string{}
	for _, t := range tags {
		keys[t] = []string{"tag", "content"}
	}
	m, tag := s.tagged(v, p, keys)
	return Text{Tag: tag, Content: s.str(m, "content", p, need)}
}

// tagged is object for a value whose "tag" picks its allowed fields from keys.
func (s *schema) tagged(v any, p string, keys map[string][]string) (map[string]any, string) {
	m, ok := v.(map[string]any)
	if !ok {
		s.failf("%s: must be an object", p)
		return nil, ""
	}
	tag := s.str(m, "tag", p, present)
	allowed, ok := keys[tag]
	if !ok {
		s.failf("%s: unknown tag %q", p, tag)
	}
	return s.object(v, p, allowed...), tag
}

// object checks that v is a JSON object with no fields beyond keys.
func (s *schema) object(v any, p string, keys ...string) map[string]any {
	m, ok := v.(map[string]any)
	if !ok {
		s.failf("%s: must be an object", p)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(keys, k) {
			s.failf("%s: unknown field %q", p, k)
		}
	}
	return m
}

func (s *schema) array(v any, p string, atLeastOne bool) []any {
	a, ok := v.([]any)
	if !ok {
		s.failf("%s: must be an array", p)
	} else if atLeastOne && len(a) == 0 {
		s.failf("%s: must not be empty", p)
	}
	return a
}

// How much str asks of a field.
const (
	optional = iota // may be absent; present must be a string
	present         // must be a string
	nonEmpty        // must be a non-empty string
)

func (s *schema) str(m map[string]any, key, p string, need int) string {
	v, ok := m[key]
	str, isStr := v.(string)
	switch {
	case !ok && need == optional:
	case !ok:
		s.failf("%s.%s: required", p, key)
	case !isStr:
		s.failf("%s.%s: must be a string", p, key)
	case need == nonEmpty && str == "":
		s.failf("%s.%s: must not be empty", p, key)
	}
	return str
}

func (s *schema) boolean(m map[string]any, key, p string) bool {
	v, ok := m[key]
	b, isBool := v.(bool)
	if ok && !isBool {
		s.failf("%s.%s: must be a bool", p, key)
	}
	return b
}

func (s *schema) oneOf(v, p string, allowed []string) {
	if !slices.Contains(allowed, v) {
		s.failf("%s: unknown %q, want one of %q", p, v, allowed)
	}
}
