// The official openai Node SDK, unmodified, against Lumen: lumen-mock and the gateway run as child
// processes (built by scripts/build.sh), one Lumen key, then chat, stream, tools, JSON mode,
// embeddings, models and errors across every dialect. Run: npm ci && node --test
//
// The gateway runs under LUMEN_TEST_RUNTIME (as tests/python/conftest.py): `host` (default,
// lumen-host), `spin-sqlite` (real `spin up`), `spin-redis` (two `spin up` on one redis-server on a
// unix socket; the key is created on the first, the SDK calls the second). Spin is SPIN_BIN, `spin`
// on PATH, or ../shared/tools/get-spin.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.LUMEN_BIN_DIR ?? path.join(REPO, 'target', 'release');
const UPSTREAM_KEY = 'sk-upstream-node';
const ADMIN = 'node-admin-token';
const MODELS = ['claude-3-5-haiku', 'gemini-2.0-flash', 'gpt-4o-mini', 'llama-3.1-8b-instruct'];
const WEATHER = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}];

const RUNTIME = process.env.LUMEN_TEST_RUNTIME || 'host';
const children = [];
const groups = [];
let client;

/** Starts a program and resolves with the address from its `Serving http://ADDR` line; `group`
 * starts it as a process group, stopped whole (`spin up` runs the app in a child process). */
function serve(program, args, env, group = false) {
  const name = path.basename(program);
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { cwd: REPO, env: { ...process.env, ...env }, detached: group });
    (group ? groups : children).push(child);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start: ${out}`)), 180_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/Serving http:\/\/(\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.stderr.on('data', () => {});
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}: ${out}`)));
  });
}

/** The Spin CLI: SPIN_BIN, `spin` on PATH, or ../shared/tools/get-spin.sh. */
function spinBinary() {
  if (process.env.SPIN_BIN) return process.env.SPIN_BIN;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && existsSync(path.join(dir, 'spin'))) return path.join(dir, 'spin');
  }
  const get = path.join(REPO, '..', 'shared', 'tools', 'get-spin.sh');
  if (existsSync(get)) return execFileSync(get, { encoding: 'utf8' }).trim();
  throw new Error(`LUMEN_TEST_RUNTIME=${RUNTIME} needs Spin: set SPIN_BIN, put spin on PATH, or provide ${get}`);
}

/** A port nobody listens on now (Spin cannot report one it picked). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function spinUp(env, state, runtimeConfig) {
  const args = ['up', '-f', path.join(REPO, 'spin.toml'), '--listen', `127.0.0.1:${await freePort()}`, '--state-dir', state];
  if (runtimeConfig) args.push('--runtime-config-file', runtimeConfig);
  return serve(spinBinary(), args, env, true);
}

/** redis-server on a unix socket in `dir`; resolves with a runtime config pointing at it. */
async function redis(dir) {
  const sock = path.join(dir, 'redis.sock');
  const child = spawn('redis-server', ['--port', '0', '--save', '', '--appendonly', 'no', '--unixsocket', sock, '--dir', dir], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 500 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 20));
  if (!existsSync(sock)) throw new Error('redis-server did not start (apt-get install redis-server)');
  const rc = path.join(dir, 'runtime-config.toml');
  writeFileSync(rc, `[key_value_store.default]\ntype = "redis"\nurl = "redis+unix://${sock}"\n`);
  return rc;
}

/** The gateway under RUNTIME: [where the admin API is called, where the SDK calls]. */
async function gateway(env) {
  const state = mkdtempSync(path.join(tmpdir(), 'lumen-node-'));
  if (RUNTIME === 'host') {
    const gw = await serve(path.join(BIN, 'lumen-host'), ['up', '--listen', '127.0.0.1:0', '--manifest', path.join(REPO, 'spin.toml'), '--state-dir', state], env);
    return [gw, gw];
  }
  if (RUNTIME === 'spin-sqlite') {
    const gw = await spinUp(env, state);
    return [gw, gw];
  }
  if (RUNTIME === 'spin-redis') {
    const rc = await redis(state);
    const replicas = [];
    for (const r of ['a', 'b']) {
      mkdirSync(path.join(state, r));
      replicas.push(await spinUp(env, path.join(state, r), rc));
    }
    return replicas;
  }
  throw new Error(`LUMEN_TEST_RUNTIME=${RUNTIME}: expected host, spin-sqlite or spin-redis`);
}

before(async () => {
  const mock = await serve(path.join(BIN, 'lumen-mock'), ['--listen', '127.0.0.1:0', '--api-key', UPSTREAM_KEY, '--token-delay-ms', '1'], {});
  const origin = `http://${mock}`;
  const env = { SPIN_VARIABLE_ADMIN_TOKEN: ADMIN };
  for (const [p, base] of [['OPENAI', `${origin}/v1`], ['AZURE', origin], ['ANTHROPIC', `${origin}/v1`], ['GEMINI', `${origin}/v1beta`], ['VLLM', `${origin}/v1`], ['RUNPOD', `${origin}/v2/qwen`]]) {
    env[`SPIN_VARIABLE_${p}_BASE_URL`] = base;
    env[`SPIN_VARIABLE_${p}_ALLOWED_HOST`] = origin;
    env[`SPIN_VARIABLE_${p}_API_KEY`] = UPSTREAM_KEY;
  }
  const [adminGw, gw] = await gateway(env);
  const r = await fetch(`http://${adminGw}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'node-sdk', rpm_limit: 100000 }),
  });
  assert.equal(r.status, 201);
  const { key } = await r.json();
  client = new OpenAI({ baseURL: `http://${gw}/v1`, apiKey: key, maxRetries: 0, timeout: 30_000 });
});

after(() => {
  for (const c of groups) {
    try {
      process.kill(-c.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const c of children) c.kill('SIGTERM');
});

for (const model of MODELS) {
  test(`${model}: chat with usage and cost`, async () => {
    const { data, response } = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'hi [mock tokens=3]' }] })
      .withResponse();
    assert.equal(data.choices[0].message.content, 'tok0 tok1 tok2 ');
    assert.equal(data.usage.completion_tokens, 3);
    assert.ok(data.usage.prompt_tokens > 0);
    assert.equal(data.lumen.model, model);
    assert.equal(Number(response.headers.get('x-lumen-cost')), data.lumen.cost);
  });

  test(`${model}: stream with usage and cost on the final chunk`, async () => {
    const stream = await client.chat.completions.create({
      model, stream: true, stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'hi [mock tokens=4]' }],
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), 'tok0 tok1 tok2 tok3 ');
    const last = chunks.at(-1);
    assert.equal(last.usage.completion_tokens, 4);
    assert.equal(last.lumen.model, model);
  });

  test(`${model}: tools, streamed and not`, async () => {
    const messages = [{ role: 'user', content: 'Weather in Paris? [mock tool=get_weather]' }];
    const done = await client.chat.completions.create({ model, messages, tools: WEATHER });
    const call = done.choices[0].message.tool_calls[0];
    assert.equal(done.choices[0].finish_reason, 'tool_calls');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    const runner = client.chat.completions.stream({ model, messages, tools: WEATHER });
    const final = await runner.finalChatCompletion();
    const streamed = final.choices[0].message.tool_calls[0];
    assert.equal(streamed.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(streamed.function.arguments), { city: 'Paris' });
  });
}

test('JSON mode is translated where the dialect can (Gemini) and refused by name where not', async () => {
  const ok = await client.chat.completions.create({
    model: 'gemini-2.0-flash', response_format: { type: 'json_object' },
    messages: [{ role: 'user', content: 'json [mock tokens=1]' }],
  });
  assert.equal(ok.choices[0].message.content, 'tok0 ');
  await assert.rejects(
    client.chat.completions.create({ model: 'claude-3-5-haiku', response_format: { type: 'json_object' }, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format' && e.code === 'unsupported_parameter',
  );
});

test('embeddings: the SDK default (base64) and float agree', async () => {
  const b64 = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['hello', 'world'], dimensions: 4 });
  const flt = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['hello', 'world'], dimensions: 4, encoding_format: 'float' });
  assert.equal(b64.data.length, 2);
  for (let i = 0; i < 2; i++) {
    assert.equal(b64.data[i].embedding.length, 4);
    b64.data[i].embedding.forEach((x, j) => assert.ok(Math.abs(x - flt.data[i].embedding[j]) < 1e-6));
  }
  assert.equal(b64.usage.prompt_tokens, 4);
});

test('models carry pricing, context window and capabilities', async () => {
  const ids = new Map();
  for await (const m of client.models.list()) ids.set(m.id, m);
  for (const m of MODELS) assert.ok(ids.has(m), m);
  const claude = ids.get('claude-3-5-haiku');
  assert.equal(claude.context_window, 200000);
  assert.ok(claude.capabilities.includes('tools'));
  assert.equal(claude.pricing.cache_write_per_mtok, 1);
});

test('errors are typed', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    OpenAI.NotFoundError,
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'gemini-2.0-flash', messages: [{ role: 'user', content: '[mock status=429]' }] }),
    OpenAI.RateLimitError,
  );
  await assert.rejects(
    new OpenAI({ baseURL: client.baseURL, apiKey: 'lm_wrong', maxRetries: 0 }).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] }),
    OpenAI.AuthenticationError,
  );
});
