// matrix-js-sdk's OAuth 2.0 client (lib/oauth) against Sotto's OAuth 2.0 API, for
// tests/integration/test_oauth_js.py. The SDK discovers, registers and runs the grants; this
// script plays the user's browser (the sign-in and device pages) with fetch.
// Reports one line: "@@RESULT <json>". Exits non-zero on any error.

import { env, runMain, say } from "./common.mjs";

const REDIRECT = "https://app.example.org/callback";

async function signIn(url, fields) {
    const page = await fetch(url);
    if (page.status !== 200) throw new Error(`sign-in page: ${page.status}`);
    const resp = await fetch(url, {
        method: "POST",
        body: new URLSearchParams(fields),
        redirect: "manual",
    });
    return resp;
}

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel("warn");
    const { OAuth2 } = await import("matrix-js-sdk/lib/oauth/index.js");
    const baseUrl = env("HS_URL");
    const user = env("USERNAME");
    const password = env("PASSWORD");

    const anonymous = sdk.createClient({ baseUrl });
    const metadata = await anonymous.getAuthMetadata(); // throws unless the SDK finds it valid
    const clientId = await OAuth2.registerClient(metadata, {
        client_name: "js-sdk test",
        client_uri: "https://app.example.org/",
        redirect_uris: [REDIRECT],
        application_type: "web",
    });
    const result = { clientId };

    // The authorisation code grant.
    const oauth = new OAuth2(metadata, { clientId });
    const url = await oauth.generateAuthorizationCodeGrantUrl("js-state", REDIRECT);
    const resp = await signIn(url, { username: user, password, action: "allow" });
    const location = resp.headers.get("location") ?? "";
    const params = new URLSearchParams(new URL(location).hash.slice(1));
    if (params.get("state") !== "js-state") throw new Error(`state lost: ${location}`);
    const tokens = await oauth.completeAuthorizationCodeGrant(params.get("code"), REDIRECT);
    const client = sdk.createClient({ baseUrl, accessToken: tokens.access_token });
    result.whoami = await client.whoami();
    result.deviceId = oauth.context.deviceId;
    result.scope = tokens.scope;

    // The refresh token grant, then a request with the new access token.
    const fresh = await oauth.performRefreshTokenGrant(tokens.refresh_token);
    const renewed = sdk.createClient({ baseUrl, accessToken: fresh.access_token });
    result.renewed = (await renewed.whoami()).device_id;

    // Revocation (logging out): the access token stops working.
    await oauth.revokeToken(fresh.access_token, "access_token");
    try {
        await renewed.whoami();
        result.revoked = false;
    } catch (e) {
        result.revoked = e.errcode;
    }

    // The device authorisation grant: the SDK polls while the "user" approves.
    const device = new OAuth2(metadata, { clientId });
    const session = await device.startDeviceAuthorizationGrant();
    const waiting = device.waitForDeviceAuthorizationGrant(session);
    const link = await signIn(session.verification_uri_complete, {
        user_code: session.user_code,
        username: user,
        password,
        action: "allow",
    });
    if (link.status !== 200) throw new Error(`device page: ${link.status}`);
    const deviceTokens = await waiting;
    const linked = sdk.createClient({ baseUrl, accessToken: deviceTokens.access_token });
    result.linked = (await linked.whoami()).device_id === device.context.deviceId;
    say(`RESULT ${JSON.stringify(result)}`);
}

runMain(main);
