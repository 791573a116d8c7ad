// The page of `lesionflow serve` (GET /): plain HTML/CSS/JS, no CDN, works offline. It talks to
// the JSON API only (docs/api.md). URL parameters fill the form (a shareable link), and
// `autorun=1` presses Generate once the page has loaded (used by the headless-browser test).
#include <sstream>
#include <string>

#include "pipeline/serve.h"
#include "train/generator.h"

namespace lf {
namespace {

const char* page_template() {
  return R"LFPAGE(<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lesionflow: describe a lesion, see it, check it</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f4f1;color:#222}
header{background:#5a3a2a;color:#fff;padding:10px 18px}
header h1{font-size:18px;margin:0}header small{opacity:.8}
main{display:grid;grid-template-columns:360px 1fr;gap:16px;padding:16px}
fieldset{border:1px solid #cbbfb4;border-radius:6px;margin:0 0 10px;padding:8px 10px;background:#fff}
legend{font-weight:600}
label{display:inline-block;margin:3px 8px 3px 0}
select,input[type=number]{width:90px}
textarea{width:100%;height:90px;box-sizing:border-box;font:13px monospace}
button{font-size:15px;padding:6px 16px;margin:4px 6px 4px 0;cursor:pointer}
#status{margin:6px 0;min-height:20px}
progress{width:100%}
#grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #cbbfb4;border-radius:6px;padding:8px;width:250px}
.card img{width:192px;height:192px;image-rendering:pixelated;display:block;margin:auto}
.measured table{width:100%;border-collapse:collapse;font-size:12px;margin-top:6px}
.measured td,.measured th{border-bottom:1px solid #eee;padding:2px 3px;text-align:left}
.bad{color:#b00020;font-weight:600}.ok{color:#1b6e20}
.err{color:#b00020}
.card a{font-size:12px;margin-right:8px}
</style></head><body>
<header><h1>lesionflow</h1><small>Describe a lesion, generate it, and check the measured
concepts against the asked ones. Synthetic images for research, not for diagnosis.</small></header>
<main><section>
<form id="form" onsubmit="return false">
<fieldset><legend>Patient and lesion</legend>
<label>diagnosis <select id="dx">
<option value="">(any)</option><option value="mel">melanoma</option><option value="nv">melanocytic nevus</option>
<option value="bcc">basal cell carcinoma</option><option value="akiec">actinic keratosis</option>
<option value="bkl">benign keratosis</option><option value="df">dermatofibroma</option>
<option value="vasc">vascular lesion</option></select></label>
<label>age <input id="age" type="number" min="0" max="120" placeholder="-"></label>
<label>sex <select id="sex"><option value="unknown">unknown</option><option>female</option><option>male</option></select></label>
<label>site <select id="site"><option value="unknown">unknown</option><option>back</option>
<option>face</option><option>chest</option><option>abdomen</option><option>trunk</option>
<option>upper extremity</option><option>lower extremity</option><option>scalp</option>
<option>neck</option><option>hand</option><option>foot</option></select></label>
<label>skin (Fitzpatrick) <select id="fitzpatrick"><option value="">-</option>
<option>1</option><option>2</option><option>3</option><option>4</option><option>5</option><option>6</option></select></label>
</fieldset>
<fieldset><legend>ABC(D) concepts</legend>
<label>asymmetry <select id="asymmetry"><option value="">-</option><option value="0">symmetric</option>
<option value="1">one axis</option><option value="2">two axes</option></select></label>
<label>border <select id="border"><option value="">-</option><option value="0">smooth (0)</option>
<option value="2">mildly irregular (2)</option><option value="5">irregular (5)</option><option value="8">ragged (8)</option></select></label>
<label>size <select id="size_fraction"><option value="">-</option><option value="0.15">small</option>
<option value="0.35">medium</option><option value="0.6">large</option></select></label><br>
colours: <span id="colours"></span>
</fieldset>
<fieldset><legend>Caption (composed from the concepts; edit freely)</legend>
<textarea id="caption" spellcheck="false"></textarea>
<small id="captionNote">composed from the concepts</small>
<button type="button" id="recompose">recompose</button>
</fieldset>
<fieldset><legend>Sampling</legend>
<label>images <input id="n" type="number" min="1" max="16" value="4"></label>
<label>seed <input id="seed" type="number" min="0" value="0"></label>
<label>steps <input id="steps" type="number" min="1" max="64" value="20"></label>
<label>guidance <input id="cfg" type="number" min="0" max="20" step="0.25" value="@DEFAULT_CFG@"></label>
<label>adapter strength <input id="lora_strength" type="number" min="0" max="2" step="0.1" value="1"></label>
</fieldset>
<button type="button" id="generate">Generate</button>
<button type="button" id="zip" disabled>Download batch (.zip)</button>
<div id="status"></div><progress id="progress" value="0" max="1" hidden></progress>
</form></section>
<section><div id="model"></div><p id="prompt"></p><div id="grid"></div></section></main>
<script>
"use strict";
const COLOURS=["white","red","light brown","dark brown","blue-gray","black"];
const $=id=>document.getElementById(id);
let edited=false, lastBatch=[], secPerImageStep=0.05, asked=null, imageSize=64;
$("colours").innerHTML=COLOURS.map(c=>`<label><input type="checkbox" value="${c}">${c}</label>`).join("");
function concepts(){
  const j={};
  if($("dx").value)j.dx=$("dx").value;
  j.sex=$("sex").value;
  if($("site").value!=="unknown")j.site=$("site").value;
  for(const k of ["age","fitzpatrick","asymmetry","border"]){const v=$(k).value;if(v!=="")j[k]=parseInt(v,10);}
  if($("size_fraction").value!=="")j.size_fraction=parseFloat($("size_fraction").value);
  const cs=[...document.querySelectorAll("#colours input:checked")].map(e=>e.value);
  if(cs.length)j.colours=cs;
  return j;
}
async function api(path,body){
  const r=await fetch(path,{method:"POST",headers:{"Content-Type":"application/json"},body:JSON.stringify(body)});
  const j=await r.json();
  if(!r.ok)throw new Error(j.error||("HTTP "+r.status));
  return j;
}
async function compose(){
  if(edited)return;
  try{const j=await api("/v1/caption",concepts());$("caption").value=j.caption_canonical;$("status").textContent="";}
  catch(e){$("status").innerHTML=`<span class="err">${esc(e.message)}</span>`;}
}
function esc(s){return String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
$("form").addEventListener("change",e=>{if(e.target.id!=="caption"&&!["n","seed","steps","cfg","lora_strength"].includes(e.target.id))compose();});
$("caption").addEventListener("input",()=>{edited=true;$("captionNote").textContent="edited by hand (asked concepts unknown)";});
$("recompose").onclick=()=>{edited=false;$("captionNote").textContent="composed from the concepts";compose();};
const BORDER_CLASS=b=>b<=1?"smooth":b<=3?"mildly irregular":b<=6?"irregular":"ragged";
function compare(a,m){
  // rows: [concept, asked, measured, agree?]
  const rows=[];
  const asym=["symmetric","one axis","two axes"];
  const mc=(m.colours||[]);
  if(!m.ok){rows.push(["lesion","","not found: "+(m.warning||""),false]);return rows;}
  rows.push(["asymmetry",a&&a.asymmetry!==undefined?asym[a.asymmetry]:"-",asym[m.asymmetry]||m.asymmetry,a&&a.asymmetry!==undefined?a.asymmetry===m.asymmetry:null]);
  rows.push(["border",a&&a.border!==undefined?BORDER_CLASS(a.border):"-",BORDER_CLASS(m.border),a&&a.border!==undefined?BORDER_CLASS(a.border)===BORDER_CLASS(m.border):null]);
  for(const c of COLOURS){
    const want=a&&a.colours?a.colours.includes(c):null, got=mc.includes(c);
    if(want||got)rows.push([c,want===null?"-":(want?"yes":"no"),got?"yes":"no",want===null?null:want===got]);
  }
  if(a&&a.size_fraction!==undefined)rows.push(["size (diameter/side)",a.size_fraction,((m.diameter_px||0)/imageSize).toFixed(2),null]);
  rows.push(["TDS (A,B,C)","",(m.tds||0).toFixed(2),null]);
  return rows;
}
function card(img,i,a){
  const m=img.measured||{};
  const rows=compare(a,m).map(r=>`<tr><td>${esc(r[0])}</td><td>${esc(r[1])}</td><td>${esc(r[2])}</td><td class="${r[3]===false?"bad":r[3]?"ok":""}">${r[3]===false?"&#10007;":r[3]?"&#10003;":""}</td></tr>`).join("");
  const name=`lesionflow_${img.provenance.request_seed}_${i}`;
  return `<div class="card"><img alt="generated lesion ${i}" src="data:image/png;base64,${img.png_base64}">
<div class="measured"><table><tr><th>concept</th><th>asked</th><th>measured</th><th></th></tr>${rows}</table></div>
<a download="${name}.png" href="data:image/png;base64,${img.png_base64}">PNG</a>
<a download="${name}.json" href="data:application/json;charset=utf-8,${encodeURIComponent(JSON.stringify({provenance:img.provenance,measured:m,asked:a},null,1))}">provenance JSON</a></div>`;
}
async function generate(){
  const body={caption:$("caption").value.trim(),n:+$("n").value,seed:+$("seed").value,steps:+$("steps").value,cfg:+$("cfg").value};
  if(!body.caption){await compose();body.caption=$("caption").value.trim();}
  if($("lora_strength").value!=="1")body.lora_strength=+$("lora_strength").value;
  asked=edited?null:concepts();
  const est=Math.max(0.5,secPerImageStep*body.n*body.steps);
  $("generate").disabled=true;$("progress").hidden=false;$("progress").value=0;
  const t0=performance.now();
  const timer=setInterval(()=>{const s=(performance.now()-t0)/1000;$("progress").value=Math.min(0.95,s/est);
    $("status").textContent=`generating ${body.n} images, ${s.toFixed(1)} s (about ${est.toFixed(0)} s expected)`;},200);
  try{
    const j=await api("/v1/generate",body);
    secPerImageStep=j.seconds/(body.n*body.steps);
    lastBatch=j.images.map((im,i)=>({im,i,asked}));
    $("prompt").textContent="prompt: "+j.caption;
    $("grid").innerHTML=j.images.map((im,i)=>card(im,i,asked)).join("");
    $("status").textContent=`${j.images.length} images in ${j.seconds.toFixed(1)} s`;
    $("zip").disabled=false;$("progress").value=1;
  }catch(e){$("status").innerHTML=`<span class="err">${esc(e.message)}</span>`;}
  finally{clearInterval(timer);$("generate").disabled=false;$("progress").hidden=true;}
}
$("generate").onclick=generate;
// A stored (uncompressed) zip: images/NAME.png and manifest.jsonl, folder-ready.
const CRC=(()=>{const t=new Uint32Array(256);for(let n=0;n<256;n++){let c=n;for(let k=0;k<8;k++)c=c&1?0xEDB88320^(c>>>1):c>>>1;t[n]=c>>>0;}return t;})();
function crc32(b){let c=0xFFFFFFFF;for(const x of b)c=CRC[(c^x)&255]^(c>>>8);return (c^0xFFFFFFFF)>>>0;}
function zip(files){
  const enc=new TextEncoder(),parts=[],dir=[];let off=0;
  const u16=v=>[v&255,v>>8&255],u32=v=>[v&255,v>>8&255,v>>16&255,v>>>24&255];
  for(const f of files){
    const name=enc.encode(f.name),crc=crc32(f.data),n=f.data.length;
    const head=[...u32(0x04034b50),...u16(20),0,0,0,0,0,0,0,0,...u32(crc),...u32(n),...u32(n),...u16(name.length),0,0];
    parts.push(new Uint8Array(head),name,f.data);
    dir.push(new Uint8Array([...u32(0x02014b50),...u16(20),...u16(20),0,0,0,0,0,0,0,0,...u32(crc),...u32(n),...u32(n),...u16(name.length),0,0,0,0,0,0,0,0,0,0,0,0,...u32(off)]),name);
    off+=head.length+name.length+n;
  }
  const dsize=dir.reduce((s,d)=>s+d.length,0);
  const end=new Uint8Array([...u32(0x06054b50),0,0,0,0,...u16(files.length),...u16(files.length),...u32(dsize),...u32(off),0,0]);
  return new Blob([...parts,...dir,end],{type:"application/zip"});
}
$("zip").onclick=()=>{
  const files=[],lines=[];
  for(const {im,i,asked:a} of lastBatch){
    const name=`images/lesionflow_${im.provenance.request_seed}_${i}.png`;
    files.push({name,data:Uint8Array.from(atob(im.png_base64),c=>c.charCodeAt(0))});
    lines.push(JSON.stringify({file:name,provenance:im.provenance,measured:im.measured,asked:a}));
  }
  files.push({name:"manifest.jsonl",data:new TextEncoder().encode(lines.join("\n")+"\n")});
  const a=document.createElement("a");a.href=URL.createObjectURL(zip(files));a.download="lesionflow_batch.zip";a.click();
};
(async()=>{
  try{const r=await fetch("/v1/model");const m=await r.json();
    $("model").innerHTML=`<small>model ${esc(m.hash).slice(0,12)} (step ${m.step}, ${m.image_size} px${m.adapters?", adapters "+esc(m.adapters):""}); limits: ${m.limits.n} images, ${m.limits.steps} steps</small>`;
    imageSize=m.image_size||64;$("steps").value=m.sampling.steps||20;$("cfg").value=m.sampling.cfg||@DEFAULT_CFG@;
    if(!m.adapters)$("lora_strength").disabled=true;}catch(e){}
  const q=new URLSearchParams(location.search);
  for(const [k,v] of q){if(k==="colours"){for(const c of v.split(","))document.querySelectorAll("#colours input").forEach(e=>{if(e.value===c)e.checked=true;});}
    else if($(k)&&k!=="autorun")$(k).value=v;}
  if(q.has("caption")){edited=true;$("captionNote").textContent="edited by hand (asked concepts unknown)";}
  await compose();
  if(q.get("autorun")==="1")await generate();
  document.body.dataset.ready="1";
})();
</script></body></html>
)LFPAGE";
}

// The guidance the page starts from (and falls back to when /v1/model cannot be read) is
// use_default_sampling()'s, filled in once: one place to change the default.
std::string fill_page() {
  GenerateConfig gc;
  use_default_sampling(gc);
  std::ostringstream cfg;
  cfg << gc.cfg_scale;  // shortest form, e.g. "1.25"
  const std::string placeholder = "@DEFAULT_CFG@";
  std::string page = page_template();
  for (size_t at; (at = page.find(placeholder)) != std::string::npos;)
    page.replace(at, placeholder.size(), cfg.str());
  return page;
}

}  // namespace

const char* serve_page_html() {
  static const std::string page = fill_page();
  return page.c_str();
}

}  // namespace lf
