// matrix-js-sdk (Rust crypto, WASM) verifying one device of a Sotto bot over to-device messages,
// as Element's "Verify session" does.
//
// Driven by tests/bot/test_device_verification.py through environment variables: HS_URL,
// USER_ID, ACCESS_TOKEN, DEVICE_ID, PASSWORD, BOT_USER_ID, BOT_DEVICE_ID and MODE:
//   MODE=request  we send the request (requestDeviceVerification) and start SAS once ready;
//   MODE=accept   we wait for the bot's request, accept it, and let the bot start SAS.
// OWN=1: we are another device of the bot's own account (no cross-signing of our own: we do not
// hold the bot's keys), so the bot's MAC should make us trust the account's identity. Otherwise we
// share an encrypted DM with the bot first, as Element only tracks devices of users it shares
// a room with (requestDeviceVerification refuses unknown devices).
// Either way we confirm the emoji when shown (the bot decides whether they match).
// Reports on stdout as "@@<STEP> <detail>" lines (everything else there is SDK logging):
//   @@ROOM <room_id>         created an encrypted DM with the bot (it must join; not with OWN=1)
//   @@READY                  set up, the bot's device is known
//   @@REQUEST <txn>          the request (sent or received) and so the transaction ID
//   @@SAS <json>             {"emoji": [symbols], "decimal": [3 numbers]} as shown to the user
//   @@VERIFIED               the SAS verification completed
//   @@CANCELLED <code>       the verification was cancelled (by either side) with this code
//   @@STATUS <json>          {"user": bot user cross-signing verified, "device": bot device
//                             cross-signing verified, "local": bot device locally verified}
// Exits 0 when done, non-zero on error or timeout.

import { env, runMain, say, sleep, until } from "./common.mjs";
import { phaseReached as sasPhaseReached, runSas } from "./sas_common.mjs";

async function main() {
    const sdk = await import("matrix-js-sdk");
    const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");
    const { CryptoEvent, VerificationPhase } = cryptoApi;

    const botUserId = env("BOT_USER_ID");
    const botDeviceId = env("BOT_DEVICE_ID");
    const mode = env("MODE");
    const own = process.env.OWN === "1";
    const client = sdk.createClient({
        baseUrl: env("HS_URL"),
        userId: env("USER_ID"),
        accessToken: env("ACCESS_TOKEN"),
        deviceId: env("DEVICE_ID"),
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const crypto = client.getCrypto();

    // Registered before the first sync so an early request is not missed.
    const incoming = Promise.withResolvers();
    client.on(CryptoEvent.VerificationRequestReceived, (request) => {
        if (request.otherUserId === botUserId && !request.roomId) incoming.resolve(request);
    });

    const synced = Promise.withResolvers();
    client.on(sdk.ClientEvent.Sync, (state) => {
        if (state === "PREPARED" || state === "SYNCING") synced.resolve();
        if (state === "ERROR") synced.reject(new Error("sync failed"));
    });
    // Short long-polls: the test server shuts down soon after we exit, and waits for open requests.
    await client.startClient({ initialSyncLimit: 20, pollTimeout: 2000 });
    await synced.promise;

    if (!own) {
        // Another user with cross-signing: what lets them verify (and sign) the bot's identity.
        await crypto.bootstrapCrossSigning({
            setupNewCrossSigning: true,
            authUploadDeviceSigningKeys: async (makeRequest) => {
                await makeRequest({
                    type: "m.login.password",
                    identifier: { type: "m.id.user", user: env("USER_ID") },
                    password: env("PASSWORD"),
                });
            },
        });
        // Element tracks the devices of users it shares an encrypted room with (and only those,
        // plus its own): "Verify session" is offered from such a room's member list.
        const { room_id: roomId } = await client.createRoom({
            preset: "trusted_private_chat",
            is_direct: true,
            invite: [botUserId],
            initial_state: [
                { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
            ],
        });
        say(`ROOM ${roomId}`);
        await until("the bot to join", () => client.getRoom(roomId)?.getMember(botUserId)?.membership === "join");
        await until("encryption in the room", () => crypto.isEncryptionEnabledInRoom(roomId));
    }
    await until("the bot's device keys", async () => {
        const devices = await crypto.getUserDeviceInfo([botUserId], true);
        return devices.get(botUserId)?.has(botDeviceId) ?? false;
    });
    say("READY");

    const request =
        mode === "request"
            ? await crypto.requestDeviceVerification(botUserId, botDeviceId)
            : await incoming.promise;
    say(`REQUEST ${request.transactionId}`);

    const phaseReached = (phases) => sasPhaseReached(request, phases, cryptoApi);
    const verified = await runSas(request, mode, cryptoApi);
    if (verified) {
        say("VERIFIED");
        // The request is done once the bot's `done` arrives.
        await phaseReached([VerificationPhase.Done, VerificationPhase.Cancelled]);
        // Trusting the bot's identity needs a /keys/query that returns the uploaded signature;
        // the server's device_lists.changed prompts it (see verify_client.mjs).
        await until(
            "the bot's identity to be verified",
            async () => (await crypto.getUserVerificationStatus(botUserId)).isCrossSigningVerified(),
            30000,
            500,
        ).catch(() => {}); // STATUS below reports what we ended with
    } else {
        await phaseReached([VerificationPhase.Cancelled]);
        say(`CANCELLED ${request.cancellationCode}`);
    }

    const device = await crypto.getDeviceVerificationStatus(botUserId, botDeviceId);
    const user = await crypto.getUserVerificationStatus(botUserId);
    say(
        `STATUS ${JSON.stringify({
            user: user.isCrossSigningVerified(),
            device: Boolean(device?.crossSigningVerified),
            local: Boolean(device?.localVerified),
        })}`,
    );
    // Let outgoing requests (the done event, signature uploads) finish, then stop cleanly.
    await sleep(500);
    client.stopClient();
    process.exit(0);
}

runMain(main);
