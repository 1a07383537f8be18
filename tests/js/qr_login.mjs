// Sign-in by QR code (MSC4108) end to end with matrix-js-sdk on both sides, against Sotto,
// for tests/integration/test_qr_login.py. The existing device (signed in, cross-signing set
// up, as Element Web's "Link new device") shows the code; the new device scans it, runs the
// OAuth device authorisation grant, which the user approves on Sotto's page, and receives the
// existing device's secrets over the secure channel. Reports "@@RESULT <json>".

import { env, runMain, say } from "./common.mjs";

async function approve(verificationUri, username, password) {
    const userCode = new URL(verificationUri).searchParams.get("user_code");
    const resp = await fetch(verificationUri, {
        method: "POST",
        body: new URLSearchParams({ user_code: userCode, username, password, action: "allow" }),
    });
    if (resp.status !== 200) throw new Error(`approval page: ${resp.status}`);
}

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");
    const { MSC4108SignInWithQR, MSC4108SecureChannel, MSC4108RendezvousSession } = await import(
        "matrix-js-sdk/lib/rendezvous/index.js"
    );
    const { OAuth2 } = await import("matrix-js-sdk/lib/oauth/index.js");
    const baseUrl = env("HS_URL");
    const failures = [];
    const onFailure = (reason) => failures.push(reason);

    // The existing device.
    const existing = sdk.createClient({
        baseUrl,
        userId: env("USER_ID"),
        accessToken: env("ACCESS_TOKEN"),
        deviceId: env("DEVICE_ID"),
    });
    await existing.initRustCrypto({ useIndexedDB: false });
    await existing.getCrypto().bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: async (makeRequest) => makeRequest(null),
    });
    const { QrCodeData } = await import("@matrix-org/matrix-sdk-crypto-wasm");
    // As Element Web does: create the rendezvous session (an empty first payload), then the code.
    const session = new MSC4108RendezvousSession({ client: existing, onFailure });
    await session.send("");
    const shower = new MSC4108SignInWithQR(
        new MSC4108SecureChannel(session, undefined, onFailure),
        false,
        existing,
        onFailure,
    );
    await shower.generateCode();

    // The new device scans the code: the rendezvous URL and the existing device's key.
    const qr = QrCodeData.fromBytes(shower.code);
    const scanner = new MSC4108SignInWithQR(
        new MSC4108SecureChannel(new MSC4108RendezvousSession({ url: qr.rendezvousUrl, onFailure }), qr.publicKey, onFailure),
        true,
        undefined,
        onFailure,
    );
    const anonymous = sdk.createClient({ baseUrl });
    const metadata = await anonymous.getAuthMetadata();
    const clientId = await OAuth2.registerClient(metadata, {
        client_name: "QR new device",
        client_uri: "https://app.example.org/",
        application_type: "native",
        grant_types: ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
    });
    const newDeviceId = "QRNEWDEVICE";

    const existingSide = (async () => {
        await shower.negotiateProtocols();
        const { verificationUri } = await shower.deviceAuthorizationGrant();
        await approve(verificationUri, env("USERNAME"), env("PASSWORD"));
        const { secrets } = await shower.shareSecrets();
        return secrets;
    })();
    const newSide = (async () => {
        await scanner.negotiateProtocols();
        await scanner.deviceAuthorizationGrant({ metadata, clientId, deviceId: newDeviceId });
        const tokens = await scanner.completeLoginOnNewDevice({ clientId });
        const { secrets } = await scanner.shareSecrets();
        return { tokens, secrets };
    })();
    const [sent, { tokens, secrets }] = await Promise.all([existingSide, newSide]);
    await scanner.close();

    const signedIn = sdk.createClient({ baseUrl, accessToken: tokens.access_token });
    const whoami = await signedIn.whoami();
    const checkCode = shower.checkCode === scanner.checkCode;
    const masterKey = secrets.cross_signing?.master_key;
    say(
        `RESULT ${JSON.stringify({
            whoami,
            sameCheckCode: checkCode,
            secretsMatch: masterKey !== undefined && masterKey === sent.cross_signing?.master_key,
            failures,
        })}`,
    );
    existing.stopClient();
}

runMain(main);
