#!/usr/bin/env bash
# End-to-end check of the test OpenID provider (scripts/oidc): installs it if missing, starts it in a temporary
# directory on a free port, and walks with curl (and node, for JSON, JWT and PKCE) through the HTTP sequences that
# scripts/oidc/README.md documents: discovery; authorization code + PKCE sign-in; the code exchange; the ID token's
# claims (groups included); userinfo; refresh, also after changing and then disabling the account; the device flow.
# Stops the provider at the end, also on failure, and exits non-zero on the first failed check.
#
#   scripts/oidc/selftest.sh          # prints one "ok" line per check; FERRY_OIDC_SELFTEST_KEEP=1 keeps the temp dir
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/ferry-oidc-selftest.XXXXXX")
PASSED=0

finish() {
    local rc=$?
    "$HERE/stop.sh" "$W" || rc=1
    if ((rc != 0)); then
        echo "oidc/selftest: FAILED after $PASSED checks; last lines of the provider's log:" >&2
        tail -n 25 "$W/oidc.log" >&2 2>/dev/null || true
    fi
    if [[ ${FERRY_OIDC_SELFTEST_KEEP:-0} == 1 ]]; then
        echo "oidc/selftest: kept $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap finish EXIT

fail() { echo "oidc/selftest: FAIL: $*" >&2; exit 1; }
ok() { PASSED=$((PASSED + 1)); echo "ok $PASSED - $*"; }

# req NAME CURL_ARGS...: one request, no redirects followed. Sets STATUS and LOCATION; the body is in $W/NAME.body.
req() {
    local name=$1
    shift
    STATUS=$(curl -sS --max-time 10 -o "$W/$name.body" -D "$W/$name.head" -w '%{http_code}' "$@") ||
        fail "$name: curl failed"
    LOCATION=$(sed -n 's/^[Ll]ocation: *//p' "$W/$name.head" | tr -d '\r')
}
expect() { # expect NAME STATUS
    [[ $STATUS == "$2" ]] || fail "$1: HTTP $STATUS, expected $2; body: $(head -c 600 "$W/$1.body")"
}
# jget FILE PATH: the value at PATH (dot-separated) of a JSON file; strings bare, anything else as JSON, nothing if
# absent. jwt_payload TOKEN: the decoded payload of a JWT. qparam URL NAME: a query parameter of URL.
jget() {
    node -e '
        let v = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        for (const k of process.argv[2].split(".")) v = v == null ? undefined : v[k];
        if (v !== undefined) console.log(typeof v === "string" ? v : JSON.stringify(v));' "$1" "$2"
}
jwt_payload() { node -e 'console.log(Buffer.from(process.argv[1].split(".")[1], "base64url").toString())' "$1"; }
qparam() { node -e 'console.log(new URL(process.argv[1]).searchParams.get(process.argv[2]) ?? "")' "$1" "$2"; }
field() { # field FILE NAME: the value of the (first) input named NAME in an HTML form
    sed -n "s/.*name=\"$2\" value=\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -n 1
}

# accounts GROUPS_JSON [DISABLED]: (re)writes the accounts file the provider reads on each lookup.
accounts() {
    local disabled=
    [[ -z ${2:-} ]] || disabled=", \"disabled\": $2"
    cat >"$W/accounts.json" <<EOF
[
  {"sub": "alice", "password": "alice-pw", "email": "alice@example.org", "name": "Alice",
   "groups": $1$disabled},
  {"sub": "bob", "password": "bob-pw", "email": "bob@example.org", "name": "Bob", "groups": ["nlp"]}
]
EOF
}

"$HERE/install.sh" >/dev/null
accounts '["ml-vision", "staff"]'
CLIENT=ferry-test
SECRET=ferry-test-secret
REDIRECT=http://127.0.0.1:9/callback
export OIDC_CLIENT_ID=$CLIENT OIDC_CLIENT_SECRET=$SECRET OIDC_REDIRECT_URIS="$REDIRECT,http://127.0.0.1:9/other"
export OIDC_ACCOUNTS=$W/accounts.json OIDC_ID_TOKEN_TTL=60 OIDC_ACCESS_TOKEN_TTL=60
ISSUER=$("$HERE/start.sh" "$W" | tail -n 1)
[[ $ISSUER =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "start.sh printed '$ISSUER', not an issuer URL"
grep -q "^ready $ISSUER\$" "$W/oidc.log" || fail "no 'ready $ISSUER' line in the log"
ok "provider started at $ISSUER"

# ---- discovery
req discovery "$ISSUER/.well-known/openid-configuration"
expect discovery 200
[[ $(jget "$W/discovery.body" issuer) == "$ISSUER" ]] || fail "discovery: wrong issuer"
AUTH=$(jget "$W/discovery.body" authorization_endpoint)
TOKEN=$(jget "$W/discovery.body" token_endpoint)
USERINFO=$(jget "$W/discovery.body" userinfo_endpoint)
DEVICE_AUTH=$(jget "$W/discovery.body" device_authorization_endpoint)
[[ $AUTH == "$ISSUER/auth" && $TOKEN == "$ISSUER/token" && $DEVICE_AUTH == "$ISSUER/device/auth" ]] ||
    fail "discovery: unexpected endpoints $AUTH $TOKEN $DEVICE_AUTH"
[[ $(jget "$W/discovery.body" code_challenge_methods_supported) == '["S256"]' ]] || fail "discovery: PKCE methods"
jget "$W/discovery.body" grant_types_supported | grep -q 'urn:ietf:params:oauth:grant-type:device_code' ||
    fail "discovery: no device_code grant"
jget "$W/discovery.body" scopes_supported | grep -q '"groups"' || fail "discovery: no groups scope"
req jwks "$(jget "$W/discovery.body" jwks_uri)"
expect jwks 200
[[ $(jget "$W/jwks.body" keys.0.alg) == RS256 ]] || fail "jwks: no RS256 key"
ok "discovery document and JWKS"

# ---- authorization code + PKCE
JAR=$W/browser.jar
VERIFIER=$(node -e 'console.log(require("crypto").randomBytes(32).toString("base64url"))')
CHALLENGE=$(node -e 'console.log(require("crypto").createHash("sha256").update(process.argv[1]).digest("base64url"))' "$VERIFIER")
STATE=state-$RANDOM
NONCE=nonce-$RANDOM

req nopkce -G "$AUTH" --data-urlencode "client_id=$CLIENT" --data-urlencode response_type=code \
    --data-urlencode scope=openid --data-urlencode "redirect_uri=$REDIRECT"
expect nopkce 303
[[ $(qparam "$LOCATION" error) == invalid_request && $LOCATION == "$REDIRECT?"* ]] ||
    fail "an authorization request without PKCE was not refused: $LOCATION"
ok "authorization request without code_challenge refused (error=invalid_request)"

req authorize -b "$JAR" -c "$JAR" -G "$AUTH" --data-urlencode "client_id=$CLIENT" \
    --data-urlencode response_type=code --data-urlencode "scope=openid profile email groups" \
    --data-urlencode "redirect_uri=$REDIRECT" --data-urlencode "state=$STATE" --data-urlencode "nonce=$NONCE" \
    --data-urlencode "code_challenge=$CHALLENGE" --data-urlencode code_challenge_method=S256
expect authorize 303
[[ $LOCATION =~ ^/interaction/[A-Za-z0-9_-]+$ ]] || fail "authorize: redirected to '$LOCATION', not to an interaction"
INTERACTION=$ISSUER$LOCATION
req login_page -b "$JAR" -c "$JAR" "$INTERACTION"
expect login_page 200
grep -q 'name="login"' "$W/login_page.body" && grep -q 'name="password"' "$W/login_page.body" ||
    fail "login page has no login/password fields"
req login_bad -b "$JAR" -c "$JAR" "$INTERACTION" --data-urlencode login=alice --data-urlencode password=wrong
expect login_bad 401
req login -b "$JAR" -c "$JAR" "$INTERACTION" --data-urlencode login=alice --data-urlencode password=alice-pw
expect login 303
[[ $LOCATION == "$ISSUER/auth/"* ]] || fail "login: redirected to '$LOCATION', not back to the authorization endpoint"
req resume -b "$JAR" -c "$JAR" "$LOCATION"
expect resume 303
[[ $LOCATION == "$REDIRECT?"* ]] || fail "resume: redirected to '$LOCATION', not to the client"
CODE=$(qparam "$LOCATION" code)
[[ -n $CODE && $(qparam "$LOCATION" state) == "$STATE" && $(qparam "$LOCATION" iss) == "$ISSUER" ]] ||
    fail "callback lacks code, state or iss: $LOCATION"
ok "authorization code + PKCE sign-in as alice (wrong password: 401) -> $REDIRECT?code=..."

req code_exchange -u "$CLIENT:$SECRET" "$TOKEN" --data-urlencode grant_type=authorization_code \
    --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT" --data-urlencode "code_verifier=$VERIFIER"
expect code_exchange 200
ID_TOKEN=$(jget "$W/code_exchange.body" id_token)
ACCESS_TOKEN=$(jget "$W/code_exchange.body" access_token)
REFRESH_TOKEN=$(jget "$W/code_exchange.body" refresh_token)
[[ -n $ID_TOKEN && -n $ACCESS_TOKEN && -n $REFRESH_TOKEN ]] || fail "code exchange lacks a token: $(cat "$W/code_exchange.body")"
[[ $(jget "$W/code_exchange.body" token_type) == Bearer && $(jget "$W/code_exchange.body" expires_in) == 60 ]] ||
    fail "code exchange: token_type/expires_in: $(cat "$W/code_exchange.body")"
ok "code exchange (client_secret_basic): id_token, access_token, refresh_token"

jwt_payload "$ID_TOKEN" >"$W/id1.json"
for check in "sub=alice" "iss=$ISSUER" "aud=$CLIENT" "nonce=$NONCE" "name=Alice" "preferred_username=alice" \
    "email=alice@example.org" 'groups=["ml-vision","staff"]'; do
    [[ $(jget "$W/id1.json" "${check%%=*}") == "${check#*=}" ]] || fail "ID token: expected $check in $(cat "$W/id1.json")"
done
(($(jget "$W/id1.json" exp) - $(jget "$W/id1.json" iat) == 60)) || fail "ID token lifetime is not 60 s"
ok "ID token claims: $(cat "$W/id1.json")"

req userinfo -H "Authorization: Bearer $ACCESS_TOKEN" "$USERINFO"
expect userinfo 200
[[ $(jget "$W/userinfo.body" sub) == alice && $(jget "$W/userinfo.body" groups) == '["ml-vision","staff"]' ]] ||
    fail "userinfo: $(cat "$W/userinfo.body")"
ok "userinfo: $(cat "$W/userinfo.body")"

# ---- refresh
refresh() { # refresh NAME: a refresh_token grant with client_secret_post, REFRESH_TOKEN updated if it rotates
    req "$1" "$TOKEN" --data-urlencode grant_type=refresh_token --data-urlencode "refresh_token=$REFRESH_TOKEN" \
        --data-urlencode "client_id=$CLIENT" --data-urlencode "client_secret=$SECRET"
    if [[ $STATUS == 200 ]]; then
        local rt
        rt=$(jget "$W/$1.body" refresh_token)
        [[ -z $rt ]] || REFRESH_TOKEN=$rt
    fi
}
refresh refresh1
expect refresh1 200
[[ -n $(jget "$W/refresh1.body" access_token) && -n $(jget "$W/refresh1.body" id_token) ]] ||
    fail "refresh: $(cat "$W/refresh1.body")"
[[ $(jget "$W/refresh1.body" access_token) != "$ACCESS_TOKEN" ]] || fail "refresh returned the same access token"
jwt_payload "$(jget "$W/refresh1.body" id_token)" >"$W/id2.json"
[[ $(jget "$W/id2.json" groups) == '["ml-vision","staff"]' ]] || fail "refreshed ID token: $(cat "$W/id2.json")"
ok "refresh_token grant (client_secret_post): new access token and ID token"

accounts '["ml-vision"]'
refresh refresh2
expect refresh2 200
jwt_payload "$(jget "$W/refresh2.body" id_token)" >"$W/id3.json"
[[ $(jget "$W/id3.json" groups) == '["ml-vision"]' ]] || fail "groups change not seen on refresh: $(cat "$W/id3.json")"
ok "refresh after editing the accounts file: ID token groups now [\"ml-vision\"]"

accounts '["ml-vision"]' true
refresh refresh3
expect refresh3 400
[[ $(jget "$W/refresh3.body" error) == invalid_grant ]] || fail "refresh of a disabled account: $(cat "$W/refresh3.body")"
ok "refresh after disabling alice: HTTP 400 $(cat "$W/refresh3.body")"
accounts '["ml-vision", "staff"]'
refresh refresh4
expect refresh4 200
ok "refresh after enabling alice again: works"

# A second exchange of the same code fails, and (RFC 6749 section 4.1.2) revokes what the code gave.
req code_replay -u "$CLIENT:$SECRET" "$TOKEN" --data-urlencode grant_type=authorization_code \
    --data-urlencode "code=$CODE" --data-urlencode "redirect_uri=$REDIRECT" --data-urlencode "code_verifier=$VERIFIER"
expect code_replay 400
[[ $(jget "$W/code_replay.body" error) == invalid_grant ]] || fail "code replay: $(cat "$W/code_replay.body")"
refresh refresh5
expect refresh5 400
ok "authorization code replay refused (invalid_grant), and the grant's refresh token revoked with it"

# ---- device flow
req device_auth -u "$CLIENT:$SECRET" "$DEVICE_AUTH" --data-urlencode "scope=openid profile email groups"
expect device_auth 200
DEVICE_CODE=$(jget "$W/device_auth.body" device_code)
USER_CODE=$(jget "$W/device_auth.body" user_code)
VERIFY=$(jget "$W/device_auth.body" verification_uri)
INTERVAL=$(jget "$W/device_auth.body" interval)
[[ -n $DEVICE_CODE && -n $USER_CODE && $VERIFY == "$ISSUER/device" && $INTERVAL == 1 ]] ||
    fail "device authorization: $(cat "$W/device_auth.body")"
ok "device authorization: user_code $USER_CODE, verification_uri $VERIFY, interval $INTERVAL"

poll() { # poll NAME
    req "$1" -u "$CLIENT:$SECRET" "$TOKEN" --data-urlencode grant_type=urn:ietf:params:oauth:grant-type:device_code \
        --data-urlencode "device_code=$DEVICE_CODE"
}
poll device_pending
expect device_pending 400
[[ $(jget "$W/device_pending.body" error) == authorization_pending ]] || fail "poll: $(cat "$W/device_pending.body")"
ok "polling before the user signs in: authorization_pending"

JAR=$W/device.jar
req device_page -b "$JAR" -c "$JAR" "$VERIFY"
expect device_page 200
XSRF=$(field "$W/device_page.body" xsrf)
[[ -n $XSRF ]] && grep -q 'name="user_code"' "$W/device_page.body" || fail "device page lacks xsrf/user_code"
req device_code -b "$JAR" -c "$JAR" "$VERIFY" --data-urlencode "xsrf=$XSRF" --data-urlencode "user_code=$USER_CODE"
expect device_code 200
[[ $(field "$W/device_code.body" confirm) == yes && $(field "$W/device_code.body" xsrf) == "$XSRF" ]] ||
    fail "device confirm page lacks the confirm form: $(cat "$W/device_code.body")"
req device_confirm -b "$JAR" -c "$JAR" "$VERIFY" --data-urlencode "xsrf=$XSRF" \
    --data-urlencode "user_code=$USER_CODE" --data-urlencode confirm=yes
expect device_confirm 303
[[ $LOCATION =~ ^/interaction/[A-Za-z0-9_-]+$ ]] || fail "device confirm: redirected to '$LOCATION'"
INTERACTION=$ISSUER$LOCATION
req device_login_page -b "$JAR" -c "$JAR" "$INTERACTION"
expect device_login_page 200
req device_login -b "$JAR" -c "$JAR" "$INTERACTION" --data-urlencode login=alice --data-urlencode password=alice-pw
expect device_login 303
[[ $LOCATION == "$ISSUER/device/"* ]] || fail "device login: redirected to '$LOCATION'"
req device_done -b "$JAR" -c "$JAR" "$LOCATION"
expect device_done 200
grep -q 'Sign-in success' "$W/device_done.body" || fail "device flow: no success page: $(cat "$W/device_done.body")"
ok "device verification: GET /device, POST xsrf+user_code, POST +confirm=yes, login as alice, success page"

for _ in $(seq 30); do
    sleep "$INTERVAL"
    poll device_token
    [[ $STATUS == 400 && $(jget "$W/device_token.body" error) == authorization_pending ]] || break
done
expect device_token 200
[[ -n $(jget "$W/device_token.body" access_token) && -n $(jget "$W/device_token.body" refresh_token) ]] ||
    fail "device token response: $(cat "$W/device_token.body")"
jwt_payload "$(jget "$W/device_token.body" id_token)" >"$W/id4.json"
[[ $(jget "$W/id4.json" sub) == alice && $(jget "$W/id4.json" groups) == '["ml-vision","staff"]' ]] ||
    fail "device flow ID token: $(cat "$W/id4.json")"
ok "device flow token poll: id_token (sub alice, groups [\"ml-vision\",\"staff\"]), access_token, refresh_token"
poll device_replay
expect device_replay 400
ok "device code replay refused ($(jget "$W/device_replay.body" error))"

# ---- stop
read -r PID _ <"$W/oidc.pid"
"$HERE/stop.sh" "$W"
! running "$PID" || fail "the provider (pid $PID) still runs after stop.sh"
curl -s --max-time 2 -o /dev/null "$ISSUER/.well-known/openid-configuration" && fail "the provider still answers after stop.sh"
ok "stop.sh stopped the provider (pid $PID)"
echo "oidc/selftest: all $PASSED checks passed"
