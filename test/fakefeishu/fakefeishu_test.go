package fakefeishu

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// client opens a new connection per request, so a request after Down is
// refused deterministically rather than failing on a pooled connection.
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

type reply struct {
	Code int            `json:"code"`
	Msg  string         `json:"msg"`
	Data map[string]any `json:"data"`
}

// clock is a settable clock for the rate-limit tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

func start(t *testing.T, bots ...Bot) *Server {
	t.Helper()
	s, err := Start(bots...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func startClock(t *testing.T, bots ...Bot) (*Server, *clock) {
	s := start(t, bots...)
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s.setNow(c.now)
	return s, c
}

func do(url, method, contentType string, body []byte) (reply, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return reply{}, errors.New(resp.Status)
	}
	var r reply
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func send(t *testing.T, url string, body []byte) reply {
	t.Helper()
	r, err := do(url, http.MethodPost, "application/json; charset=utf-8", body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func expect(t *testing.T, got reply, code int, msgPart string) {
	t.Helper()
	if got.Code != code || !strings.Contains(got.Msg, msgPart) || got.Data == nil {
		t.Fatalf("got %+v, want code %d with msg containing %q and data {}", got, code, msgPart)
	}
}

func marshal(t *testing.T, m Message) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signedBody returns m signed at ts with secret.
func signedBody(t *testing.T, m Message, secret string, ts time.Time) []byte {
	m.Timestamp = strconv.FormatInt(ts.Unix(), 10)
	m.Sign = Sign(m.Timestamp, secret)
	return marshal(t, m)
}

func textMsg(text string) Message {
	c, _ := json.Marshal(map[string]string{"text": text})
	return Message{MsgType: "text", Content: c}
}

func alertCard() *Card {
	return &Card{
		Config: map[string]any{"wide_screen_mode": true},
		Header: Header{Title: Text{"plain_text", "[corecatch] nginx crashed"}, Template: "red"},
		Elements: []Element{
			{Tag: "div", Text: &Text{"lark_md", "**SIGSEGV** in worker"}, Fields: []Field{
				{true, Text{"lark_md", "**Node**\nnode-1"}},
				{true, Text{"plain_text", "pod web-0"}},
			}},
			{Tag: "hr"},
			{Tag: "markdown", Content: "backtrace: `ngx_http_process`"},
			{Tag: "action", Actions: []Button{
				{Text: Text{"plain_text", "Download core"}, URL: "https://s3.example.com/core.zst", Type: "primary"},
				{Text: Text{"plain_text", "Dashboard"}, URL: "http://grafana.local/d/1"},
			}},
			{Tag: "note", Elements: []Text{{"plain_text", "corecatch v1"}}},
		},
	}
}

const secret = "s3cret"

func TestSignedCardAccepted(t *testing.T) {
	s := start(t, Bot{Token: "tok", Secret: secret, Keyword: "corecatch"})
	body := signedBody(t, Message{MsgType: "interactive", Card: alertCard()}, secret, time.Now())
	expect(t, send(t, s.URL("tok"), body), 0, "success")

	acc := s.Accepted()
	if len(acc) != 1 || len(s.Requests()) != 1 {
		t.Fatalf("accepted %d of %d requests, want 1 of 1", len(acc), len(s.Requests()))
	}
	r := acc[0]
	if r.Token != "tok" || r.Msg != "success" || !bytes.Equal(r.Body, body) || r.Message.MsgType != "interactive" || r.Message.Sign == "" {
		t.Fatalf("recorded %+v", r)
	}
	if !reflect.DeepEqual(r.Message.Card, alertCard()) {
		t.Fatalf("parsed card %+v, want %+v", r.Message.Card, alertCard())
	}
	text := r.Message.Card.Text()
	for _, want := range []string{"[corecatch] nginx crashed", "**SIGSEGV** in worker", "pod web-0", "backtrace", "Download core", "https://s3.example.com/core.zst", "corecatch v1"} {
		if !strings.Contains(text, want) {
			t.Errorf("card text lacks %q:\n%s", want, text)
		}
	}
	if bs := r.Message.Card.Buttons(); len(bs) != 2 || bs[0].URL != "https://s3.example.com/core.zst" || bs[1].Text.Content != "Dashboard" {
		t.Errorf("buttons %+v", bs)
	}
}

func TestTextAndPost(t *testing.T) {
	s := start(t, Bot{Token: "tok", Keyword: "corecatch"})
	expect(t, send(t, s.URL("tok"), marshal(t, textMsg("corecatch: all good"))), 0, "success")
	post := `{"msg_type":"post","content":{"post":{"zh_cn":{"title":"alert","content":[[
		{"tag":"text","text":"from corecatch "},{"tag":"a","text":"link","href":"https://x.example"},{"tag":"at","user_id":"all"}]]}}}}`
	expect(t, send(t, s.URL("tok"), []byte(post)), 0, "success")
	if got := s.Accepted()[0].Message; got.MsgType != "text" || string(got.Content) != `{"text":"corecatch: all good"}` || got.Card != nil {
		t.Fatalf("recorded %+v", got)
	}
}

func TestSignature(t *testing.T) {
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret)) // the common bug: keyed by the secret
	mac.Write([]byte(ts + "\n" + secret))
	wrongHMAC := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	with := func(ts, sign string) []byte {
		m := textMsg("hi")
		m.Timestamp, m.Sign = ts, sign
		return marshal(t, m)
	}
	for _, tc := range []struct {
		name string
		body []byte
		code int
	}{
		{"good", signedBody(t, textMsg("hi"), secret, now), 0},
		{"59 min old", signedBody(t, textMsg("hi"), secret, now.Add(-59*time.Minute)), 0},
		{"59 min ahead", signedBody(t, textMsg("hi"), secret, now.Add(59*time.Minute)), 0},
		{"wrong HMAC", with(ts, wrongHMAC), CodeSignature},
		{"other secret", signedBody(t, textMsg("hi"), "other", now), CodeSignature},
		{"2 h old", signedBody(t, textMsg("hi"), secret, now.Add(-2*time.Hour)), CodeSignature},
		{"2 h ahead", signedBody(t, textMsg("hi"), secret, now.Add(2*time.Hour)), CodeSignature},
		{"missing sign", with(ts, ""), CodeSignature},
		{"missing both", marshal(t, textMsg("hi")), CodeSignature},
		{"timestamp in ms", with(ts+"000", Sign(ts+"000", secret)), CodeSignature},
		{"timestamp a number", []byte(`{"msg_type":"text","content":{"text":"hi"},"timestamp":` + ts + `,"sign":"` + Sign(ts, secret) + `"}`), CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, Bot{Token: "tok", Secret: secret})
			if got := send(t, s.URL("tok"), tc.body); got.Code != tc.code {
				t.Fatalf("got %+v, want code %d", got, tc.code)
			}
		})
	}
	t.Run("no secret ignores sign", func(t *testing.T) {
		s := start(t, Bot{Token: "tok"})
		expect(t, send(t, s.URL("tok"), with(ts, "garbage")), 0, "success")
	})
}

func TestRateLimitPerSecond(t *testing.T) {
	s, c := startClock(t, Bot{Token: "tok"})
	body := marshal(t, textMsg("hi"))
	for i := range 5 {
		expect(t, send(t, s.URL("tok"), body), 0, "success")
		c.add(100 * time.Millisecond * time.Duration(i%2))
	}
	expect(t, send(t, s.URL("tok"), body), CodeRateLimited, "frequency limited")
	c.add(time.Second)
	expect(t, send(t, s.URL("tok"), body), 0, "success")
	if n := len(s.Accepted()); n != 6 {
		t.Fatalf("accepted %d, want 6", n)
	}
}

func TestRateLimitPerMinute(t *testing.T) {
	s, c := startClock(t, Bot{Token: "tok"}, Bot{Token: "other"})
	body := marshal(t, textMsg("hi"))
	for range 100 {
		expect(t, send(t, s.URL("tok"), body), 0, "success")
		c.add(500 * time.Millisecond) // 2 per second: never the per-second limit
	}
	expect(t, send(t, s.URL("tok"), body), CodeRateLimited, "frequency limited")
	expect(t, send(t, s.URL("other"), body), 0, "success") // limits are per bot
	c.add(11 * time.Second)                                // the first three fall out of the window
	expect(t, send(t, s.URL("tok"), body), 0, "success")
}

func TestTooLarge(t *testing.T) {
	s := start(t, Bot{Token: "tok"})
	expect(t, send(t, s.URL("tok"), marshal(t, textMsg(strings.Repeat("x", 21*1024)))), CodeTooLarge, "")

	base := len(marshal(t, textMsg("")))
	exact := marshal(t, textMsg(strings.Repeat("x", MaxBody-base)))
	if len(exact) != MaxBody {
		t.Fatalf("built %d bytes", len(exact))
	}
	expect(t, send(t, s.URL("tok"), exact), 0, "success")
	expect(t, send(t, s.URL("tok"), append(exact, ' ')), CodeTooLarge, "")
}

func TestKeyword(t *testing.T) {
	s := start(t, Bot{Token: "tok", Keyword: "corecatch"})
	expect(t, send(t, s.URL("tok"), marshal(t, textMsg("nginx crashed"))), CodeKeyword, "Key Words Not Found")
	card := alertCard()
	card.Header.Title.Content = "nginx crashed"
	card.Elements[4].Elements[0].Content = "v1"
	expect(t, send(t, s.URL("tok"), marshal(t, Message{MsgType: "interactive", Card: card})), CodeKeyword, "")
	card.Elements[3].Actions[0].URL = "https://corecatch.example/core" // a url counts as text
	expect(t, send(t, s.URL("tok"), marshal(t, Message{MsgType: "interactive", Card: card})), 0, "success")
}

func TestUnknownToken(t *testing.T) {
	s := start(t, Bot{Token: "tok"})
	expect(t, send(t, s.URL("nope"), marshal(t, textMsg("hi"))), CodeInvalidToken, "token invalid")
	expect(t, send(t, s.URL(""), marshal(t, textMsg("hi"))), CodeInvalidToken, "")
	if _, err := do("http://"+s.addr+"/elsewhere", http.MethodPost, "application/json", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("other path: %v, want 404", err)
	}
	reqs := s.Requests()
	if len(reqs) != 3 || reqs[0].Token != "nope" || reqs[0].Code != CodeInvalidToken || reqs[2].Code != 404 || len(s.Accepted()) != 0 {
		t.Fatalf("recorded %+v", reqs)
	}
}

func TestBadRequest(t *testing.T) {
	card := func(elements string) string {
		return `{"msg_type":"interactive","card":{"header":{"title":{"tag":"plain_text","content":"t"}},"elements":[` + elements + `]}}`
	}
	div := `{"tag":"div","text":{"tag":"lark_md","content":"x"}}`
	for _, tc := range []struct{ name, body, msg string }{
		{"card in content", `{"msg_type":"interactive","content":{"card":{"header":{"title":{"tag":"plain_text","content":"t"}},"elements":[` + div + `]}}}`, "top level"},
		{"button without url", card(`{"tag":"action","actions":[{"tag":"button","text":{"tag":"plain_text","content":"b"}}]}`), "card.elements[0].actions[0].url: required"},
		{"unknown element tag", card(div + `,{"tag":"hr"},{"tag":"foo"}`), `card.elements[2]: unknown tag "foo"`},
		{"unknown field", card(`{"tag":"div","text":{"tag":"lark_md","content":"x"},"extra":1}`), `card.elements[0]: unknown field "extra"`},
		{"unknown card field", `{"msg_type":"interactive","card":{"header":{"title":{"tag":"plain_text","content":"t"}},"elements":[` + div + `],"i18n":{}}}`, `card: unknown field "i18n"`},
		{"unknown msg_type", `{"msg_type":"video","content":{}}`, `msg_type: unknown "video"`},
		{"no msg_type", `{"content":{"text":"x"}}`, "msg_type"},
		{"bad JSON", `{"msg_type":`, "invalid JSON"},
		{"empty text", `{"msg_type":"text","content":{"text":""}}`, "content.text: must not be empty"},
		{"text without content", `{"msg_type":"text"}`, "content: must be an object"},
		{"empty elements", card(``), "card.elements: must not be empty"},
		{"no header", `{"msg_type":"interactive","card":{"elements":[` + div + `]}}`, "card.header: must be an object"},
		{"title lark_md", `{"msg_type":"interactive","card":{"header":{"title":{"tag":"lark_md","content":"t"}},"elements":[` + div + `]}}`, `card.header.title: unknown tag "lark_md"`},
		{"empty title", `{"msg_type":"interactive","card":{"header":{"title":{"tag":"plain_text","content":""}},"elements":[` + div + `]}}`, "card.header.title.content"},
		{"bad template", `{"msg_type":"interactive","card":{"header":{"title":{"tag":"plain_text","content":"t"},"template":"pink"},"elements":[` + div + `]}}`, "card.header.template"},
		{"bad config", `{"msg_type":"interactive","card":{"config":{"wide_screen_mode":"yes"},"header":{"title":{"tag":"plain_text","content":"t"}},"elements":[` + div + `]}}`, "card.config.wide_screen_mode"},
		{"empty div", card(`{"tag":"div"}`), "div needs text or fields"},
		{"bad text tag", card(`{"tag":"div","text":{"tag":"html","content":"x"}}`), `card.elements[0].text: unknown tag "html"`},
		{"field is_short", card(`{"tag":"div","fields":[{"is_short":"yes","text":{"tag":"lark_md","content":"x"}}]}`), "fields[0].is_short"},
		{"relative url", card(`{"tag":"action","actions":[{"tag":"button","text":{"tag":"plain_text","content":"b"},"url":"/core"}]}`), "absolute"},
		{"button type", card(`{"tag":"action","actions":[{"tag":"button","text":{"tag":"plain_text","content":"b"},"url":"https://x","type":"warning"}]}`), "type"},
		{"callback button", card(`{"tag":"action","actions":[{"tag":"button","text":{"tag":"plain_text","content":"b"},"value":{"k":"v"}}]}`), `unknown field "value"`},
		{"select action", card(`{"tag":"action","actions":[{"tag":"select_static"}]}`), `unknown tag "select_static"`},
		{"note image", card(`{"tag":"note","elements":[{"tag":"img","img_key":"k"}]}`), `card.elements[0].elements[0]: unknown tag "img"`},
		{"markdown without content", card(`{"tag":"markdown"}`), "content: required"},
		{"hr with text", card(`{"tag":"hr","text":"x"}`), `unknown field "text"`},
		{"post unknown tag", `{"msg_type":"post","content":{"post":{"en_us":{"title":"t","content":[[{"tag":"video"}]]}}}}`, `content.post.en_us.content[0][0]: unknown tag "video"`},
		{"post no language", `{"msg_type":"post","content":{"post":{}}}`, "zh_cn or en_us"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := start(t, Bot{Token: "tok"})
			expect(t, send(t, s.URL("tok"), []byte(tc.body)), CodeBadRequest, tc.msg)
			if r := s.Requests()[0]; r.Message.Card != nil {
				t.Fatalf("rejected card recorded as parsed: %+v", r.Message.Card)
			}
		})
	}
	t.Run("method and content type", func(t *testing.T) {
		s := start(t, Bot{Token: "tok"})
		body := marshal(t, textMsg("hi"))
		for _, c := range []struct{ method, ct string }{{http.MethodPut, "application/json"}, {http.MethodPost, "text/plain"}, {http.MethodPost, ""}} {
			r, err := do(s.URL("tok"), c.method, c.ct, body)
			if err != nil {
				t.Fatal(err)
			}
			expect(t, r, CodeBadRequest, "Bad Request")
		}
	})
}

// TestOrder checks that an earlier check wins over a later one.
func TestOrder(t *testing.T) {
	s, c := startClock(t, Bot{Token: "tok", Secret: secret, Keyword: "corecatch"})
	big := marshal(t, textMsg(strings.Repeat("x", MaxBody)))
	expect(t, send(t, s.URL("bad"), big), CodeInvalidToken, "") // token before size
	for range 5 {
		expect(t, send(t, s.URL("tok"), big), CodeTooLarge, "") // size before rate, and counted
	}
	expect(t, send(t, s.URL("tok"), []byte("{")), CodeRateLimited, "") // rate before JSON
	c.add(time.Second)
	expect(t, send(t, s.URL("tok"), []byte("{")), CodeBadRequest, "invalid JSON") // JSON before signature
	expect(t, send(t, s.URL("tok"), []byte(`{"msg_type":"video"}`)), CodeSignature, "")
	// signature before schema; schema before keyword
	expect(t, send(t, s.URL("tok"), signedBody(t, Message{MsgType: "video"}, secret, c.now())), CodeBadRequest, "video")
	expect(t, send(t, s.URL("tok"), signedBody(t, textMsg("hi"), secret, c.now())), CodeKeyword, "")
}

func TestDownUp(t *testing.T) {
	s := start(t, Bot{Token: "tok"})
	url := s.URL("tok")
	body := marshal(t, textMsg("hi"))
	expect(t, send(t, url, body), 0, "success")
	if err := s.Down(); err != nil {
		t.Fatal(err)
	}
	if _, err := do(url, http.MethodPost, "application/json", body); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("while down: %v, want connection refused", err)
	}
	if s.Down() == nil {
		t.Fatal("Down twice succeeded")
	}
	if err := s.Up(); err != nil {
		t.Fatal(err)
	}
	if s.Up() == nil {
		t.Fatal("Up twice succeeded")
	}
	if s.URL("tok") != url {
		t.Fatalf("URL changed to %s", s.URL("tok"))
	}
	expect(t, send(t, url, body), 0, "success")
	if n := len(s.Requests()); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
	s.Close()
	if s.Up() == nil {
		t.Fatal("Up after Close succeeded")
	}
}

func TestConcurrent(t *testing.T) {
	s, _ := startClock(t, Bot{Token: "tok"})
	body := marshal(t, textMsg("hi"))
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := do(s.URL("tok"), http.MethodPost, "application/json", body); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if r, a := len(s.Requests()), len(s.Accepted()); r != 20 || a != 5 {
		t.Fatalf("%d requests, %d accepted; want 20 and 5 (all in one instant)", r, a)
	}
}

func TestStartRejectsBadBots(t *testing.T) {
	for _, bots := range [][]Bot{{{Token: ""}}, {{Token: "a/b"}}, {{Token: "a"}, {Token: "a"}}} {
		if s, err := Start(bots...); err == nil {
			s.Close()
			t.Errorf("Start(%+v) succeeded", bots)
		}
	}
}
